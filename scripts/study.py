from cohortseg.smk import setup
from cohortseg.study import Config, run

config = setup(snakemake, Config)
p, o = snakemake.params, snakemake.output
run(config, [(s, dict(probs), ref) for s, probs, ref in p.cases], list(p.models), o.selection, o.table)
