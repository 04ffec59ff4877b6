from cohortseg.ensemble import build_ensemble
from cohortseg.smk import setup

setup(snakemake)
build_ensemble(list(snakemake.input.models), snakemake.params.n_folds, snakemake.output.manifest)
