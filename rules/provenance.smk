rule provenance:
    """Versions, git state, config and hash, input checksums, hardware, SHA-256 of every output."""
    input:
        outputs=all_outputs,
        prepared=provenance_prepared,
        masks=f"{PRIV}/masks.json",
    output:
        manifest=report(
            "results/provenance.json",
            category="6. Provenance",
            caption="../report/provenance.rst",
        ),
    params:
        code=fingerprint("provenance"),
        sidecars=provenance_sidecars,
        results=results_folder,
    log:
        "logs/provenance.log",
    benchmark:
        "logs/benchmarks/provenance.tsv",
    resources:
        mem_mb=RES["light_mem_mb"],
        runtime=30,
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/provenance.py"
