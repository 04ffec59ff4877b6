rule study:
    """The study's choices on cross-validation only: the best model or ensemble of the top models, and the
    post-processing that helps (results/study/selection.json, used by every later inference)."""
    input:
        preds=cv_prediction_folders,
        refs=cv_references,
    output:
        selection="results/study/selection.json",
        table=report(
            "results/study/selection.tsv",
            category="5. Study",
            caption="../report/study_selection.rst",
        ),
    params:
        code=fingerprint("study"),
        cases=cv_cases,
        models=models_list,
    log:
        "logs/study.log",
    benchmark:
        "logs/benchmarks/study.tsv",
    threads: RES["light_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/study.py"
