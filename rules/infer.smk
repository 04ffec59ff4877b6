rule infer_fold:
    """A fold's model on its validation subjects (cross-validation), in source space; one job per fold."""
    input:
        prepared=lambda wc: prepared(fold_val(wc.fold)),
        models=["results/models/fold{fold}/model.pt"],
    output:
        preds=directory("results/predictions/fold{fold}"),
    params:
        code=fingerprint("infer"),
        name="fold{fold}",
        cases=lambda wc: fold_val(wc.fold),
        images=lambda wc: [f"results/nifti/{s}/image.nii.gz" for s in fold_val(wc.fold)],
        manifest=None,
    log:
        "logs/infer/fold{fold}.log",
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
        prepared=lambda wc: prepared(ensemble_shards()[wc.shard]),
        manifest="results/models/ensemble.json",
        models=fold_models(),
    output:
        done="results/predictions/shards/{shard}.json",
    params:
        code=fingerprint("infer"),
        name="ensemble",
        cases=lambda wc: ensemble_shards()[wc.shard],
        images=lambda wc: [f"results/nifti/{s}/image.nii.gz" for s in ensemble_shards()[wc.shard]],
        folder="results/predictions/ensemble",
        manifest=lambda wc, input: input.manifest,
    log:
        "logs/infer/ensemble/{shard}.log",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=lambda wc, attempt: attempt * (10 + 2 * len(ensemble_shards()[wc.shard])),
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"


rule infer_external:
    """The ensemble on an extra NIfTI cohort named in config (infer.cohorts)."""
    input:
        image=external_image,
        manifest="results/models/ensemble.json",
        models=fold_models(),
    output:
        pred="results/predictions_external/{cohort}/{case}.nii.gz",
        info="results/predictions_external/{cohort}/{case}.json",
    params:
        code=fingerprint("infer"),
        name="ensemble",
        cases=lambda wc: [f"{wc.cohort}/{wc.case}"],
        images=lambda wc, input: [input.image],
        manifest=lambda wc, input: input.manifest,
    log:
        "logs/infer_external/{cohort}/{case}.log",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/infer.py"
