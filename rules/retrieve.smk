rule retrieve:
    """`source: pacs`: the cohort pulled from the PACS (QIDO-RS, series kept by pacs.query, WADO-RS) into
    private_dir/raw/, resumable; results/cohort/retrieved.tsv says, per series the PACS offered, what was
    retrieved or why not. New studies in the PACS: `snakemake --forcerun retrieve` (instances already held
    are skipped; what changes reruns what reads it)."""
    output:
        table="results/cohort/retrieved.tsv",
    params:
        code=fingerprint("retrieve"),
    log:
        "logs/retrieve.log",
    benchmark:
        "logs/benchmarks/retrieve.tsv",
    threads: 1
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=int(config["pacs"]["retrieve_minutes"]) + 10,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/retrieve.py"
