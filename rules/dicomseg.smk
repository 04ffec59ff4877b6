rule dicomseg:
    """The study's predictions of a shard as DICOM SEGs of the series the model read (highdicom, BINARY),
    built in private_dir (they carry the patient's identifiers) and checked by reading them back onto the
    prediction's grid; results/dicomseg/<shard>.json records the check without identifiers."""
    input:
        predictions="results/predictions/study/shards/{shard}.json",
        included="results/cohort/included.tsv",
        series_files=f"{PRIV}/series_files.json",
        selection="results/study/selection.json",
    output:
        record="results/dicomseg/{shard}.json",
        segs=directory(f"{PRIV}/dicomseg/{{shard}}"),
    params:
        code=fingerprint("dicomseg"),
    log:
        "logs/dicomseg/{shard}.log",
    benchmark:
        "logs/benchmarks/dicomseg/{shard}.tsv",
    threads: RES["light_threads"]
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=30,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/dicomseg.py"
