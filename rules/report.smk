rule selection_chart:
    """Bar chart of rejected series per reason."""
    input:
        summary="results/cohort/exclusion_summary.tsv",
    output:
        png=report(
            "results/report/selection.png",
            category="1. Cohort",
            caption="../report/selection.rst",
        ),
    params:
        code=fingerprint("report"),
    log:
        "logs/report/selection.log",
    benchmark:
        "logs/benchmarks/report/selection.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/report.py"


rule dice_chart:
    """Dice per case of every model: cross-validation and test."""
    input:
        cases="results/metrics/cases.tsv",
    output:
        png=report(
            "results/report/dice.png",
            category="4. Metrics",
            caption="../report/dice.rst",
        ),
    params:
        code=fingerprint("report"),
    log:
        "logs/report/dice.log",
    benchmark:
        "logs/benchmarks/report/dice.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/report.py"


rule overlay:
    """Every model's test prediction and the study's selection (red) against the reference (green), side
    by side on the source image of a test subject."""
    input:
        prepared=overlay_prepared,
        predicted=overlay_predictions,
    output:
        png=report(
            "results/report/overlays/{subject}.png",
            category="5. Predictions",
            caption="../report/overlay.rst",
            labels={"subject": "{subject}"},
        ),
    params:
        code=fingerprint("report"),
        image="results/nifti/{subject}/image.nii.gz",
        reference="results/nifti/{subject}/label.nii.gz",
        panels=overlay_panels,
    log:
        "logs/report/overlay/{subject}.log",
    benchmark:
        "logs/benchmarks/report/overlay/{subject}.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/report.py"
