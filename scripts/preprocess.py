from cohortseg.preprocess import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
i, p = snakemake.input, snakemake.params
run(config, i.dataset, list(p.subjects), p.nifti, p.preproc, snakemake.output.manifest, snakemake.wildcards.shard,
    p.code, snakemake.threads)
