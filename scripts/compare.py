from cohortseg.compare import Config, Outputs, run
from cohortseg.smk import paths, setup

config = setup(snakemake, Config)
i = snakemake.input
run(config, i.cases, i.timing, list(i.infos), list(i.histories), paths(Outputs, snakemake.output))
