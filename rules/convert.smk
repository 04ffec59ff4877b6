rule convert:
    """Selected DICOM series -> NIfTI under the subject's pseudonym, with an identifier-free sidecar."""
    input:
        included="results/cohort/included.tsv",
        series_files=f"{PRIV}/series_files.json",
    output:
        image="results/nifti/{subject}/image.nii.gz",
        sidecar="results/nifti/{subject}/image.json",
    params:
        code=fingerprint("convert"),
    log:
        "logs/convert/{subject}.log",
    threads: RES["light_threads"]
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=15,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/convert.py"


rule convert_mask:
    """The radiologist's mask on the converted image's grid (nearest neighbour if it differs)."""
    input:
        image="results/nifti/{subject}/image.nii.gz",
        masks=f"{PRIV}/masks.json",
    output:
        label="results/nifti/{subject}/label.nii.gz",
    params:
        code=fingerprint("convert"),
    log:
        "logs/convert_mask/{subject}.log",
    threads: RES["light_threads"]
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=10,
    conda:
        "../envs/dicom.yaml"
    script:
        "../scripts/convert_mask.py"
