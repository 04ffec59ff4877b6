rule compare:
    """The models side by side: metrics with bootstrap CIs, paired Wilcoxon tests (Holm), time, size,
    memory, final- vs selected-epoch validation Dice, learning curves of every model on one figure."""
    input:
        cases="results/metrics/cases.tsv",
        timing="results/metrics/timing.tsv",
        infos=all_train_infos,
        histories=all_histories,
    output:
        comparison=report(
            "results/study/comparison.tsv",
            category="5. Study",
            caption="../report/comparison.rst",
        ),
        pairs=report(
            "results/study/pairs.tsv",
            category="5. Study",
            caption="../report/pairs.rst",
        ),
        models=report(
            "results/study/models.tsv",
            category="5. Study",
            caption="../report/models.rst",
        ),
        curves=report(
            "results/study/learning_curves.png",
            category="5. Study",
            caption="../report/learning_curves.rst",
        ),
    params:
        code=fingerprint("compare"),
    log:
        "logs/compare.log",
    benchmark:
        "logs/benchmarks/compare.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/compare.py"
