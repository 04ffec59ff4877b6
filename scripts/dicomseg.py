from cohortseg.dicomseg import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
i, o = snakemake.input, snakemake.output
run(config, i.predictions, i.included, i.series_files, i.selection, o.segs, o.record)
