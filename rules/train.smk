rule train:
    """One fold: model, per-epoch history, curves; checkpoints in results/checkpoints (resumable)."""
    input:
        unpack(preproc_inputs),
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
    threads: RES["train_threads"]
    resources:
        mem_mb=lambda wc, attempt: RES["train_mem_mb"] * attempt,
        runtime=RES["train_runtime_min"],
        gpu=RES["gpus_train"],
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/train.py"
