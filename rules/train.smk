rule train:
    """One fold of one model: model, per-epoch history, curves; checkpoints in results/checkpoints
    (resumable)."""
    input:
        preprocessed=train_preprocessed,
        splits="results/splits.json",
        dataset="results/plans/dataset.json",
        plan="results/plans/models/{model}.json",
    output:
        model="results/models/{model}/fold{fold}/model.pt",
        history="results/models/{model}/fold{fold}/history.tsv",
        curves=report(
            "results/models/{model}/fold{fold}/curves.png",
            category="3. Training",
            caption="../report/curves.rst",
            labels={"model": "{model}", "fold": "{fold}", "figure": "learning curves"},
        ),
        info="results/models/{model}/fold{fold}/train.json",
    params:
        code=train_code,
        checkpoint="results/checkpoints/{model}/fold{fold}.pt",
        preproc="results/preproc",
    log:
        "logs/train/{model}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/train/{model}/fold{fold}.tsv",
    # the network's threads plus the patch loader's worker processes (one thread each)
    threads: train_threads
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        gpu=RES["gpus_train"],
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"
