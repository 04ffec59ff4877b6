rule prepare:
    """One shard of subjects: DICOM -> NIfTI under the pseudonym (identifier-free sidecar), the
    radiologist's mask on the image grid, and the case's survey for the plan; unchanged subjects are
    skipped."""
    input:
        included="results/cohort/included.tsv",
        series_files=f"{PRIV}/series_files.json",
        masks=f"{PRIV}/masks.json",
    output:
        manifest="results/prepared/{shard}.json",
    params:
        code=fingerprint("prepare"),
        subjects=shard_job_subjects,
        stamp=subject_stamp,
        # each subject's files go to results/nifti/<subject>/
        nifti="results/nifti",
    log:
        "logs/prepare/{shard}.log",
    benchmark:
        "logs/benchmarks/prepare/{shard}.tsv",
    threads: RES["light_threads"]
    resources:
        mem_mb=prepare_mem_mb,
        runtime=prepare_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/prepare.py"
