from cohortseg.provenance import build
from cohortseg.smk import setup

cfg = setup(snakemake)
i = snakemake.input
build(cfg, list(snakemake.params.sidecars), i.masks, "results", snakemake.output.manifest)
