from cohortseg.export import run
from cohortseg.smk import setup

cfg = setup(snakemake)
i, p = snakemake.input, snakemake.params
run(cfg, i.manifest, p.out_dir, snakemake.output.info, p.volume, snakemake.threads, cfg["export"]["tolerance"])
