from cohortseg.infer import Config, run, write_shard_manifest
from cohortseg.smk import setup

config = setup(snakemake, Config)
i, o, p = snakemake.input, snakemake.output, snakemake.params
# p.cases: (case, image, prediction, timing json) from the rule
cases = [tuple(c) for c in p.cases]
manifests = list(i.manifests) if hasattr(i, "manifests") else None
run(config, p.name, cases, list(i.models), manifests, snakemake.threads, selection=i.get("selection"),
    save_probabilities=p.probabilities)
if hasattr(o, "done"):  # predictions of a shard of subjects, listed in the shard's manifest
    write_shard_manifest(snakemake.wildcards.shard, cases, o.done)
