from cohortseg.provenance import Config, build
from cohortseg.smk import setup

config = setup(snakemake, Config)
p = snakemake.params
build(config, list(p.sidecars), snakemake.input.masks, p.results, snakemake.output.manifest)
