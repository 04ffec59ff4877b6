import json
from pathlib import Path

from cohortseg.smk import paths, setup
from cohortseg.train import Config, FoldPaths, train_fold

config = setup(snakemake, Config)
splits = json.loads(Path(snakemake.input.splits).read_text())
# the job's threads: the network's plus the patch loader's worker processes (one thread each)
threads = max(1, snakemake.threads - config.train.loader_workers)
train_fold(config, int(snakemake.wildcards.fold), splits, paths(FoldPaths, snakemake.output, snakemake.params),
           snakemake.params.code, threads)
