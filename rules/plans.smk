rule plan_dataset:
    """The dataset plan from the cross-validation subjects' surveys: target spacing, volume size,
    normalisation by modality (cohortseg.plans)."""
    input:
        prepared=survey_prepared,
        splits="results/splits.json",
    output:
        dataset="results/plans/dataset.json",
    params:
        code=plan_dataset_code,
        surveys=survey_files,
    log:
        "logs/plans/dataset.log",
    benchmark:
        "logs/benchmarks/plans/dataset.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/plans.py"


rule plan_model:
    """A model's window (whole volume or patch) and batch, fitted to the memory budget."""
    input:
        dataset="results/plans/dataset.json",
    output:
        model="results/plans/models/{model}.json",
    params:
        code=plan_model_code,
    log:
        "logs/plans/{model}.log",
    benchmark:
        "logs/benchmarks/plans/{model}.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/plans.py"


rule plans:
    """The plans a person reads: results/plans/plans.json (dataset + every model) and plans.tsv (every
    planned value, where it came from and why)."""
    input:
        dataset="results/plans/dataset.json",
        models=plan_models,
    output:
        json="results/plans/plans.json",
        tsv=report(
            "results/plans/plans.tsv",
            category="2. Plans",
            caption="../report/plans.rst",
        ),
    params:
        code=fingerprint("plans"),
    log:
        "logs/plans/plans.log",
    benchmark:
        "logs/benchmarks/plans/plans.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/plans.py"
