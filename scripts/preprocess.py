from cohortseg.preprocess import run
from cohortseg.smk import setup

cfg = setup(snakemake)
i, o = snakemake.input, snakemake.output
run(cfg, snakemake.wildcards.subject, i.image, i.label, o.image, o.label, o.info)
