rule prepare:
    """One shard of subjects: DICOM -> NIfTI under the pseudonym (identifier-free sidecar), the
    radiologist's mask on the image grid, and preprocessing; unchanged subjects are skipped."""
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
        # each subject's files go to results/nifti/<subject>/ and results/preproc/<subject>/
        nifti="results/nifti",
        preproc="results/preproc",
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
