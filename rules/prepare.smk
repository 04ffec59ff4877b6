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
        subjects=lambda wc: shard_subjects()[wc.shard],
    log:
        "logs/prepare/{shard}.log",
    threads: RES["light_threads"]
    resources:
        mem_mb=lambda wc, attempt: RES["light_mem_mb"] * attempt,
        runtime=lambda wc, attempt: attempt * (10 + 5 * -(-len(shard_subjects()[wc.shard]) // RES["light_threads"])),
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/prepare.py"
