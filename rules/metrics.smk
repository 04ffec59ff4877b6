rule metrics:
    """Dice, IoU, HD95, HD, average Hausdorff and volumes in mm of every model (folds on their validation
    subjects, fold ensembles and the study's selection on the test subjects); per case, summaries, timing."""
    input:
        unpack(metrics_inputs),
    output:
        cases=report(
            "results/metrics/cases.tsv",
            category="4. Metrics",
            caption="../report/cases.rst",
        ),
        summary=report(
            "results/metrics/summary.tsv",
            category="4. Metrics",
            caption="../report/summary.rst",
        ),
        timing=report(
            "results/metrics/timing.tsv",
            category="4. Metrics",
            caption="../report/timing.rst",
        ),
    params:
        code=fingerprint("metrics"),
        pairs=metric_pairs,
        pred_info=metric_pred_info,
    log:
        "logs/metrics.log",
    benchmark:
        "logs/benchmarks/metrics.tsv",
    threads: RES["light_threads"]
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/metrics.py"
