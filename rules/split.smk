checkpoint split:
    """Seeded k-fold split + held-out test set of the labelled subjects (or split.file as is)."""
    input:
        included="results/cohort/included.tsv",
    output:
        splits="results/splits.json",
    params:
        code=fingerprint("split"),
    log:
        "logs/split.log",
    benchmark:
        "logs/benchmarks/split.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/split.py"
