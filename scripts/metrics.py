from cohortseg.metrics import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
o, p = snakemake.output, snakemake.params
run(config, [tuple(x) for x in p.pairs], list(snakemake.input.train_info), list(p.pred_info), o.cases, o.summary,
    o.timing)
