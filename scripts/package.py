from cohortseg.package import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
i = snakemake.input
run(config, i.selection, list(i.manifests), i.plans, i.comparison, i.included, i.splits, snakemake.output.folder)
