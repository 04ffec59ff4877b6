from cohortseg.ensemble import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
run(config, list(snakemake.input.models), snakemake.output.manifest, snakemake.wildcards.model)
