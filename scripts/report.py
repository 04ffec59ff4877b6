from cohortseg import report
from cohortseg.smk import setup

setup(snakemake)
i, o = snakemake.input, snakemake.output
if snakemake.rule == "selection_chart":
    report.selection_chart(i.summary, o.png)
elif snakemake.rule == "dice_chart":
    report.dice_chart(i.cases, o.png)
else:
    report.overlay(i.image, i.reference, i.prediction, o.png, f"ensemble, {snakemake.wildcards.subject}")
