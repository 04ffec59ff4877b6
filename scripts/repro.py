from cohortseg.repro import run
from cohortseg.smk import setup

cfg = setup(snakemake)
run(cfg, ".", "results/repro", cores=snakemake.threads)
