import json
from pathlib import Path

from cohortseg.smk import paths, setup
from cohortseg.train import Config, FoldPaths, train_fold

model = snakemake.wildcards.model
i = snakemake.input
config = setup(snakemake, Config, model=model).with_plans(json.loads(Path(i.dataset).read_text()),
                                                          json.loads(Path(i.plan).read_text()))
splits = json.loads(Path(i.splits).read_text())
# the job's threads: the network's plus, in patch mode, the loader's worker processes (one thread each)
threads = max(1, snakemake.threads - config.train.loader_workers)
train_fold(config, int(snakemake.wildcards.fold), splits, paths(FoldPaths, snakemake.output, snakemake.params),
           snakemake.params.code, threads, model)
