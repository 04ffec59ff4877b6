rule export:
    """TorchScript + ONNX of every fold and of the ensemble, each checked against PyTorch on a
    preprocessed validation image, and the 3D Slicer package of the best fold (results/export/)."""
    input:
        manifest="results/models/ensemble.json",
        models=fold_models(),
        prepared=export_prepared,
    output:
        # fold<k>.ts/.onnx, ensemble.ts/.onnx, the Slicer package and export.json (parity figures)
        folder=directory("results/export"),
    params:
        code=fingerprint("export"),
        volume=export_volume,
    log:
        "logs/export.log",
    benchmark:
        "logs/benchmarks/export.tsv",
    threads: RES["infer_threads"]
    resources:
        mem_mb=RES["infer_mem_mb"],
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/export.py"
