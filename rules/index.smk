rule index:
    """Read every DICOM header once (no pixel data), or check every NIfTI image/label pair, into the
    pseudonymous series table."""
    input:
        unpack(index_inputs),
    output:
        series="results/cohort/series.tsv",
        subjects="results/cohort/subjects.tsv",
        series_files=f"{PRIV}/series_files.json",
        masks=f"{PRIV}/masks.json",
        id_map=f"{PRIV}/id_map.tsv",
        file_map=f"{PRIV}/file_map.tsv",
        descriptors=f"{PRIV}/descriptors.json",
    params:
        code=fingerprint("index"),
    log:
        "logs/index.log",
    benchmark:
        "logs/benchmarks/index.tsv",
    threads: config["index"]["threads"]
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=60,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/index.py"
