from cohortseg.repro import Config, Outputs, run
from cohortseg.smk import paths, setup

config = setup(snakemake, Config)
run(config, snakemake.params.main, paths(Outputs, snakemake.output), cores=snakemake.threads)
