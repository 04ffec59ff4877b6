from cohortseg.smk import setup
from cohortseg.split import run

cfg = setup(snakemake)
run(cfg, snakemake.input.included, snakemake.output.splits)
