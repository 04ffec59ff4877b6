from cohortseg.push import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
run(config, list(snakemake.input.records), list(snakemake.input.segs), snakemake.output.table)
