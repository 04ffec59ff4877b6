from cohortseg.index import Config, Outputs, run
from cohortseg.smk import paths, setup

config = setup(snakemake, Config)
run(config, paths(Outputs, snakemake.output), workers=snakemake.threads)
