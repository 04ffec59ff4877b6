from cohortseg.infer import Config, run, write_shard_manifest
from cohortseg.smk import setup

config = setup(snakemake, Config)
i, o, p = snakemake.input, snakemake.output, snakemake.params
# p.cases: (case, image, prediction, timing json) from the rule
cases = [tuple(c) for c in p.cases]
run(config, p.name, cases, list(i.models), i.get("manifest"), snakemake.threads)
if hasattr(o, "done"):  # the ensemble on a shard of subjects, listed in the shard's manifest
    write_shard_manifest(snakemake.wildcards.shard, cases, o.done)
