from cohortseg.retrieve import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
run(config, snakemake.output.table)
