rule preprocess:
    """Canonical orientation, resampling, normalisation, crop/pad; uncompressed for fast loading."""
    input:
        image="results/nifti/{subject}/image.nii.gz",
        label="results/nifti/{subject}/label.nii.gz",
    output:
        image="results/preproc/{subject}/image.nii",
        label="results/preproc/{subject}/label.nii",
        info="results/preproc/{subject}/info.json",
    params:
        code=fingerprint("preprocess"),
    log:
        "logs/preprocess/{subject}.log",
    threads: RES["light_threads"]
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=15,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/preprocess.py"
