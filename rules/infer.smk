rule infer_fold:
    """A fold's model on its validation subjects (cross-validation), in source space; one job per fold."""
    input:
        images=lambda wc: [f"results/nifti/{s}/image.nii.gz" for s in fold_val(wc.fold)],
        models=["results/models/fold{fold}/model.pt"],
    output:
        preds=directory("results/predictions/fold{fold}"),
    params:
        code=fingerprint("infer"),
        name="fold{fold}",
        cases=lambda wc: fold_val(wc.fold),
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
    """The fold ensemble (averaged probabilities) on test and unlabelled subjects, in source space."""
    input:
        image="results/nifti/{subject}/image.nii.gz",
        manifest="results/models/ensemble.json",
        models=fold_models(),
    output:
        pred="results/predictions/ensemble/{subject}.nii.gz",
        info="results/predictions/ensemble/{subject}.json",
    params:
        code=fingerprint("infer"),
        name="ensemble",
        cases=lambda wc: [wc.subject],
        manifest=lambda wc, input: input.manifest,
    log:
        "logs/infer/ensemble/{subject}.log",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=30,
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
