rule preprocess:
    """One shard of cross-validation subjects brought to the plan's space (results/preproc/<subject>/);
    unchanged subjects are skipped."""
    input:
        prepared=preprocess_prepared,
        dataset="results/plans/dataset.json",
    output:
        manifest="results/preprocessed/{shard}.json",
    params:
        code=fingerprint("preprocess"),
        subjects=preprocess_job_subjects,
        nifti="results/nifti",
        # each subject's files go to results/preproc/<subject>/ (the slash: not a prefix of the manifests)
        preproc="results/preproc/",
    log:
        "logs/preprocess/{shard}.log",
    benchmark:
        "logs/benchmarks/preprocess/{shard}.tsv",
    threads: RES["light_threads"]
    resources:
        mem_mb=prepare_mem_mb,
        runtime=preprocess_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/preprocess.py"


rule ready:
    """Target: the cohort ready for training, as nnUNetv2_plan_and_preprocess leaves a dataset: every
    cross-validation subject converted, surveyed, planned for and preprocessed (`snakemake ready`);
    prints the plans."""
    input:
        plans="results/plans/plans.tsv",
        preprocessed=all_preprocessed,
    log:
        "logs/ready.log",
    benchmark:
        "logs/benchmarks/ready.tsv",
    localrule: True
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/dicom.yaml"
    shell:
        "cat {input.plans} | tee {log}"
