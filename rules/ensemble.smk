rule ensemble:
    """Manifest of exactly the declared folds (a missing fold is an error, never a smaller ensemble)."""
    input:
        models=fold_models(),
    output:
        manifest="results/models/ensemble.json",
    params:
        code=fingerprint("ensemble"),
    log:
        "logs/ensemble.log",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/ensemble.py"
