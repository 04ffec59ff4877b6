rule infer_fold:
    """A model's fold on its validation subjects (cross-validation), in source space, with the class
    probabilities the study's selection reads; one job per model and fold."""
    input:
        prepared=fold_val_prepared,
        models=fold_model,
    output:
        preds=directory("results/predictions/{model}/fold{fold}"),
    params:
        code=fingerprint("infer"),
        name=fold_predictor_name,
        cases=fold_val_cases,
        probabilities=True,
    log:
        "logs/infer/{model}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/infer/{model}/fold{fold}.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=60,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"


rule infer_ensemble:
    """A model's fold ensemble (averaged probabilities) on the test subjects of a shard, in source space:
    results/predictions/<model>/test/<subject>.nii.gz (+ .json), listed in the shard's manifest. Scored
    once, at the end, for the comparison; nothing is chosen on them."""
    input:
        prepared=test_shard_prepared,
        manifests=model_manifest,
        models=ensemble_models,
    output:
        done="results/predictions/{model}/test_shards/{shard}.json",
    params:
        code=fingerprint("infer"),
        name=ensemble_predictor_name,
        cases=test_shard_cases,
        probabilities=False,
    log:
        "logs/infer/{model}/test_{shard}.log",
    benchmark:
        "logs/benchmarks/infer/{model}/test_{shard}.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=test_shard_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"


rule infer_study:
    """The study's selection (results/study/selection.json: its models' fold ensembles averaged, its
    post-processing) on the test and unlabelled subjects of a shard, in source space:
    results/predictions/study/<subject>.nii.gz (+ .json), listed in the shard's manifest."""
    input:
        prepared=study_shard_prepared,
        selection="results/study/selection.json",
        manifests=all_manifests(),
        models=all_fold_models(),
    output:
        done="results/predictions/study/shards/{shard}.json",
    params:
        code=fingerprint("infer"),
        name="study/selected",
        cases=study_shard_cases,
        probabilities=False,
    log:
        "logs/infer/study/{shard}.log",
    benchmark:
        "logs/benchmarks/infer/study/{shard}.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=study_shard_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"


rule infer_external:
    """The study's selection on an extra NIfTI cohort named in config (infer.cohorts): one job per cohort,
    the models loaded once; <case>.nii.gz (+ .json) per image in results/predictions_external/<cohort>/."""
    input:
        images=external_images,
        selection="results/study/selection.json",
        manifests=all_manifests(),
        models=all_fold_models(),
    output:
        preds=directory("results/predictions_external/{cohort}"),
    params:
        code=fingerprint("infer"),
        name="study/selected",
        cases=external_cohort_cases,
        probabilities=False,
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
