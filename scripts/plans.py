import json
from pathlib import Path

from cohortseg.plans import Config, run_dataset, run_model, run_summary
from cohortseg.smk import setup

i, o, p = snakemake.input, snakemake.output, snakemake.params
if snakemake.rule == "plan_dataset":
    config = setup(snakemake, Config)
    run_dataset(config, [json.loads(Path(f).read_text()) for f in p.surveys], o.dataset)
elif snakemake.rule == "plan_model":
    config = setup(snakemake, Config, model=snakemake.wildcards.model)
    run_model(config, snakemake.wildcards.model, json.loads(Path(i.dataset).read_text()), o.model)
else:
    setup(snakemake, Config)
    models = {Path(f).stem: json.loads(Path(f).read_text()) for f in i.models}
    run_summary(json.loads(Path(i.dataset).read_text()), models, o.json, o.tsv)
