from cohortseg.export import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
run(config, snakemake.input.manifest, snakemake.output.folder, snakemake.params.volume, snakemake.threads)
