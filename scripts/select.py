from cohortseg.select import Config, run
from cohortseg.smk import setup

config = setup(snakemake, Config)
i, o = snakemake.input, snakemake.output
run(config, i.series, i.subjects, o.included, o.excluded, o.summary, o.text, i.descriptors, i.get("retrieved"))
