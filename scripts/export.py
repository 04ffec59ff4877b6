from cohortseg.export import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
i = snakemake.input
run(config, list(i.manifests), i.selection, snakemake.output.folder, snakemake.params.volume, snakemake.threads)
