rule train:
    """One fold: model, per-epoch history, curves; checkpoints in results/checkpoints (resumable)."""
    input:
        prepared=train_prepared,
        splits="results/splits.json",
    output:
        model="results/models/fold{fold}/model.pt",
        history="results/models/fold{fold}/history.tsv",
        curves=report(
            "results/models/fold{fold}/curves.png",
            category="3. Training",
            caption="../report/curves.rst",
            labels={"fold": "{fold}", "figure": "learning curves"},
        ),
        info="results/models/fold{fold}/train.json",
    params:
        code=fingerprint("train"),
        checkpoint="results/checkpoints/fold{fold}.pt",
        preproc="results/preproc",
    log:
        "logs/train/fold{fold}.log",
    benchmark:
        "logs/benchmarks/train/fold{fold}.tsv",
    # the network's threads plus the patch loader's worker processes (one thread each)
    threads: RES["train_threads"] + loader_workers(config)
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
        gpu=RES["gpus_train"],
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"
