rule export:
    """TorchScript + ONNX of every fold and of the ensemble, each checked against PyTorch on a
    preprocessed validation image, and the 3D Slicer package of the best fold (results/export/)."""
    input:
        manifest="results/models/ensemble.json",
        models=fold_models(),
        prepared=lambda wc: prepared(fold_val(0)[:1]),
    output:
        info="results/export/export.json",
    params:
        code=fingerprint("export"),
        out_dir=lambda wc, output: os.path.dirname(output.info),
        volume=lambda wc: f"results/preproc/{fold_val(0)[0]}/image.nii",
    log:
        "logs/export.log",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/export.py"
