rule export:
    """TorchScript + ONNX of every fold and of the fold ensemble of each model the study selected, each
    checked against PyTorch on a preprocessed validation image, and the 3D Slicer package of its best fold
    (results/export/<model>/; the selection and its post-processing recorded in export.json)."""
    input:
        selection="results/study/selection.json",
        manifests=all_manifests(),
        models=all_fold_models(),
        prepared=export_preprocessed,
    output:
        # <model>/fold<k>.ts/.onnx, <model>/ensemble.ts/.onnx, the Slicer package, export.json (parity)
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
