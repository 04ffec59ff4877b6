rule package:
    """The model package: the fold weights of the models the study selected, their manifests, the selection
    and post-processing, the plans, the training configuration, a model card and checksums
    (results/model/<study>-v<version>/), read by `cohortseg infer --package` and `cohortseg watch`. Run by
    `snakemake package`, or in the default target with package.enabled: true."""
    input:
        selection="results/study/selection.json",
        manifests=all_manifests(),
        models=all_fold_models(),
        plans="results/plans/plans.json",
        comparison="results/study/comparison.tsv",
        included="results/cohort/included.tsv",
        splits="results/splits.json",
    output:
        folder=directory(package_dir()),
    params:
        code=fingerprint("package"),
    log:
        "logs/package.log",
    benchmark:
        "logs/benchmarks/package.tsv",
    threads: 1
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=10,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/package.py"
