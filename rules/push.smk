rule push:
    """Every written DICOM SEG stored in the PACS by DICOMweb STOW-RS (pacs.url; credentials from
    pacs.credentials_env or pacs.credentials_file) or DIMSE C-STORE (pacs.protocol: dimse); results/pacs/pushed.tsv says what was stored. Run by
    `snakemake push`, or in the default target with pacs.push: true."""
    input:
        records=dicomseg_records,
        segs=dicomseg_folders,
    output:
        table="results/pacs/pushed.tsv",
    params:
        code=fingerprint("push"),
    log:
        "logs/push.log",
    benchmark:
        "logs/benchmarks/push.tsv",
    threads: 1
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=60,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/push.py"
