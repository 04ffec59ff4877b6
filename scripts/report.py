from cohortseg import report
from cohortseg.smk import setup

setup(snakemake, report.Config)
i, o, p = snakemake.input, snakemake.output, snakemake.params
if snakemake.rule == "selection_chart":
    report.selection_chart(i.summary, o.png)
elif snakemake.rule == "dice_chart":
    report.dice_chart(i.cases, o.png)
else:
    report.overlay(p.image, p.reference, [tuple(x) for x in p.panels], o.png, f"test subject {snakemake.wildcards.subject}")
