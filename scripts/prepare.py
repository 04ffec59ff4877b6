from cohortseg.prepare import run
from cohortseg.smk import setup

cfg = setup(snakemake)
i = snakemake.input
run(cfg, snakemake.wildcards.shard, i.included, i.series_files, i.masks, snakemake.output.manifest,
    snakemake.params.code, snakemake.threads)
