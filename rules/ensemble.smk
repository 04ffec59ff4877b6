rule ensemble:
    """A model's manifest of exactly the declared folds (a missing fold is an error naming the model, never
    a smaller ensemble)."""
    input:
        models=ensemble_models,
        infos=ensemble_infos,
    output:
        manifest="results/models/{model}/ensemble.json",
    params:
        code=fingerprint("ensemble"),
    log:
        "logs/ensemble/{model}.log",
    benchmark:
        "logs/benchmarks/ensemble/{model}.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=5,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/ensemble.py"
