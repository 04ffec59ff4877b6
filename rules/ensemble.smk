rule ensemble:
    """Manifest of exactly the declared folds (a missing fold is an error, never a smaller ensemble)."""
    input:
        models=fold_models(),
        # each fold's metadata (labels, window, architecture, validation Dice), read without torch
        infos=[f"results/models/fold{k}/train.json" for k in range(N_FOLDS)],
    output:
        manifest="results/models/ensemble.json",
    params:
        code=fingerprint("ensemble"),
    log:
        "logs/ensemble.log",
    benchmark:
        "logs/benchmarks/ensemble.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/ensemble.py"
