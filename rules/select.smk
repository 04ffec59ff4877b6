checkpoint select:
    """Apply the tag rules; one series per subject; the cohort audit. Needs no conversion."""
    input:
        series="results/cohort/series.tsv",
        subjects="results/cohort/subjects.tsv",
        # the raw free-text descriptors the rules see (results/ holds the cleaned ones)
        descriptors=f"{PRIV}/descriptors.json",
        # source: pacs: the series the query left in the PACS, with their reason, join the audit
        **select_query_table(),
    output:
        included=report(
            "results/cohort/included.tsv",
            category="1. Cohort",
            caption="../report/included.rst",
        ),
        excluded=report(
            "results/cohort/excluded.tsv",
            category="1. Cohort",
            caption="../report/excluded.rst",
        ),
        summary=report(
            "results/cohort/exclusion_summary.tsv",
            category="1. Cohort",
            caption="../report/exclusion_summary.rst",
        ),
        text="results/cohort/summary.txt",
    params:
        code=fingerprint("select"),
    log:
        "logs/select.log",
    benchmark:
        "logs/benchmarks/select.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=10,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/select.py"


rule audit:
    """The cohort selection audit alone: index and select, no conversion or training."""
    input:
        excluded=rules.select.output.excluded,
        summary=rules.select.output.summary,
        text=rules.select.output.text,
    log:
        "logs/audit.log",
    benchmark:
        "logs/benchmarks/audit.tsv",
    localrule: True
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/dicom.yaml"
    shell:
        "cat {input.text} | tee {log}"
