from cohortseg.smk import setup
from cohortseg.split import Config, run

config = setup(snakemake, Config)
run(config, snakemake.input.included, snakemake.output.splits)
