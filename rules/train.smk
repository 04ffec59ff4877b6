rule train:
    """One fold: model, per-epoch history, curves; checkpoints in results/checkpoints (resumable)."""
    input:
        prepared=lambda wc: prepared(fold_subjects(wc.fold)),
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
    log:
        "logs/train/fold{fold}.log",
    # the network's threads plus the patch loader's worker processes (one thread each)
    threads: RES["train_threads"] + loader_workers(config)
    resources:
        mem_mb=lambda wc, attempt: RES["train_mem_mb"] * attempt,
        # a retry after the wall time resumes from the checkpoint, with twice (three times...) the time
        runtime=lambda wc, attempt: RES["train_runtime_min"] * attempt,
        gpu=RES["gpus_train"],
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"
