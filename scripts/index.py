from cohortseg.index import run
from cohortseg.smk import setup

cfg = setup(snakemake)
run(cfg, snakemake.output.series, snakemake.output.subjects, workers=snakemake.threads)
