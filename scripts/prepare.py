from cohortseg.prepare import Config, Folders, run
from cohortseg.smk import paths, setup

config = setup(snakemake, Config)
i, p = snakemake.input, snakemake.params
run(config, snakemake.wildcards.shard, i.included, i.series_files, i.masks, snakemake.output.manifest, p.stamp,
    paths(Folders, p), snakemake.threads)
