import json
from pathlib import Path

from cohortseg.config import loader_workers
from cohortseg.smk import setup
from cohortseg.train import train_fold

cfg = setup(snakemake)
o = snakemake.output
splits = json.loads(Path(snakemake.input.splits).read_text())
train_fold(cfg, int(snakemake.wildcards.fold), splits, "results/preproc", o.model, o.history, o.curves, o.info,
           snakemake.params.checkpoint, snakemake.params.code, max(1, snakemake.threads - loader_workers(cfg)))
