from cohortseg.select import run
from cohortseg.smk import setup

cfg = setup(snakemake)
o = snakemake.output
run(cfg, snakemake.input.series, snakemake.input.subjects, o.included, o.excluded, o.summary, o.text)
