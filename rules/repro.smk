rule repro:
    """Reproducibility audit: the chosen stages re-executed repro.runs times (and once per further
    thread count) in separate trees under repro.dir, compared by SHA-256; metrics' test-retest SD and
    ICC(3,1). Not part of `all`: `snakemake repro` or `make repro`."""
    input:
        outputs=all_outputs,
    output:
        stages=report(
            "results/repro/stages.tsv",
            category="7. Reproducibility",
            caption="../report/repro_stages.rst",
        ),
        files="results/repro/files.tsv",
        variability=report(
            "results/repro/metrics_variability.tsv",
            category="7. Reproducibility",
            caption="../report/repro_variability.rst",
        ),
        dashboard=report(
            "results/repro/dashboard.png",
            category="7. Reproducibility",
            caption="../report/repro_dashboard.rst",
        ),
        summary="results/repro/summary.txt",
    params:
        code=fingerprint("repro"),
        # the workflow folder of the main run, whose outputs the executions start from
        main=".",
    log:
        "logs/repro.log",
    benchmark:
        "logs/benchmarks/repro.tsv",
    threads: repro_threads()
    resources:
        mem_mb=RES["train_mem_mb"],
        runtime=repro_runtime,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/repro.py"
