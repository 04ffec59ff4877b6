from cohortseg.convert import run_mask
from cohortseg.smk import setup

cfg = setup(snakemake)
i = snakemake.input
run_mask(cfg, snakemake.wildcards.subject, i.image, i.masks, snakemake.output.label)
