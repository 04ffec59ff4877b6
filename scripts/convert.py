from cohortseg.convert import run
from cohortseg.smk import setup

cfg = setup(snakemake)
i, o = snakemake.input, snakemake.output
run(cfg, snakemake.wildcards.subject, i.included, i.series_files, o.image, o.sidecar)
