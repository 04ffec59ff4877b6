rule infer_fold:
    """A fold's model on its validation subjects (cross-validation), in source space; one job per fold."""
    input:
        prepared=fold_val_prepared,
        models=["results/models/fold{fold}/model.pt"],
    output:
        preds=directory("results/predictions/fold{fold}"),
    params:
        code=fingerprint("infer"),
        name="fold{fold}",
        cases=fold_val_cases,
    log:
        "logs/infer/fold{fold}.log",
    benchmark:
        "logs/benchmarks/infer/fold{fold}.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"


rule infer_ensemble:
    """The fold ensemble (averaged probabilities) on the test and unlabelled subjects of a shard, in
    source space: results/predictions/ensemble/<subject>.nii.gz (+ .json), listed in the shard's manifest."""
    input:
        prepared=ensemble_shard_prepared,
        manifest="results/models/ensemble.json",
        models=fold_models(),
    output:
        done="results/predictions/shards/{shard}.json",
    params:
        code=fingerprint("infer"),
        name="ensemble",
        # each subject's prediction and timing go to results/predictions/ensemble/, listed in `done`
        cases=ensemble_shard_cases,
    log:
        "logs/infer/ensemble/{shard}.log",
    benchmark:
        "logs/benchmarks/infer/ensemble/{shard}.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=ensemble_shard_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"


rule infer_external:
    """The ensemble on an extra NIfTI cohort named in config (infer.cohorts): one job per cohort, the
    models loaded once; <case>.nii.gz (+ .json) per image in results/predictions_external/<cohort>/."""
    input:
        images=external_images,
        manifest="results/models/ensemble.json",
        models=fold_models(),
    output:
        preds=directory("results/predictions_external/{cohort}"),
    params:
        code=fingerprint("infer"),
        name="ensemble",
        cases=external_cohort_cases,
    log:
        "logs/infer_external/{cohort}.log",
    benchmark:
        "logs/benchmarks/infer_external/{cohort}.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=external_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"
