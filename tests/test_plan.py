"""Plan-time checks of a dry run against the cluster (`cohortseg plan`), on recorded `sinfo` and
dry-run text; the same checks against a live SLURM: tests/test_e2e.py::test_plan_refuses_what_the_cluster_cannot_run."""

from __future__ import annotations

from pathlib import Path

from cohortseg.plan import check_against_cluster, cluster, parse_dry_run

SINFO = """cpu*|32|190000|(null)|1-00:00:00|(null)
gpu|64|500000|gpu:a100:4(S:0-1)|2-00:00:00|a100,ib
gpu|64|250000|gpu:a100:2|2-00:00:00|a100
"""

DRY_RUN = """
[Mon Nov 23 18:36:33 2026] Group job prep (jobs in lexicogr. order):
    [Mon Nov 23 18:36:33 2026]
    rule prepare:
        wildcards: shard=34
        threads: 4
        resources: tmpdir=/tmp, mem_mb=60000, mem=60 GB, slurm_partition=cpu, runtime=15
    [Mon Nov 23 18:36:33 2026]
    rule prepare:
        wildcards: shard=48
        threads: 4
        resources: tmpdir=/tmp, mem_mb=60000, mem=60 GB, slurm_partition=cpu, runtime=25

[Mon Nov 23 18:36:33 2026]
rule train:
    wildcards: fold=0
    threads: 8
    resources: tmpdir=/tmp, mem_mb=64000, slurm_partition=gpu, runtime=4000, gpu=8, constraint=h100

[Mon Nov 23 18:36:33 2026]
rule infer_fold:
    wildcards: fold=0
    resources: tmpdir=/tmp, mem_mb=8000, slurm_partition=gpus, runtime=60, gpu=1, slurm_partiton=gpu

[Mon Nov 23 18:36:33 2026]
rule metrics:
    resources: tmpdir=/tmp, mem_mb=2000, runtime=30
"""


def test_sinfo_is_read_per_partition() -> None:
    parts = cluster(SINFO)
    assert parts is not None
    assert parts["cpu"] == {"cpus": 32, "mem_mb": 190000, "gpus": 0, "minutes": 1440.0, "features": set(), "default": True}
    assert parts["gpu"]["gpus"] == 4 and parts["gpu"]["mem_mb"] == 500000 and parts["gpu"]["features"] == {"a100", "ib"}


def test_every_unrunnable_request_is_named() -> None:
    jobs = parse_dry_run(DRY_RUN)
    assert list(jobs["rule"]) == ["prepare", "prepare", "train", "infer_fold", "metrics"]
    assert jobs["group"].iloc[0] == jobs["group"].iloc[1] != "" and jobs["group"].iloc[2] == ""
    problems = check_against_cluster(jobs, cluster(SINFO), {"prep": 10})  # type: ignore[arg-type]
    text = "\n".join(problems)
    # the group job's two members run side by side: 2 x 60000 MB on one node
    assert "group job prep (2 jobs): asks for 120000 MB of memory, the largest node of partition 'cpu' has 190000" \
        not in text
    assert "rule train (fold=0): asks for 8 GPUs, the largest node of partition 'gpu' has 4" in text
    assert "rule train (fold=0): runtime 4000 min exceeds partition 'gpu''s limit of 2880 min" in text
    assert "rule train (fold=0): constraint 'h100': no node of partition 'gpu' has feature(s) h100" in text
    assert "rule infer_fold (fold=0): partition 'gpus' does not exist (sinfo lists: cpu, gpu)" in text
    assert "rule infer_fold: resource 'slurm_partiton' is unknown to the slurm executor" in text
    assert len(problems) == 5, problems
    # metrics names no partition: the default one (cpu), which fits


def test_group_job_is_the_sum_of_its_members() -> None:
    jobs = parse_dry_run(DRY_RUN.replace("mem_mb=60000", "mem_mb=100000"))
    problems = check_against_cluster(jobs, cluster(SINFO), {"prep": 10})  # type: ignore[arg-type]
    assert "group job prep (2 jobs): asks for 200000 MB of memory, the largest node of partition 'cpu' has 190000" \
        in problems
    # one job per submission (group-components 1): each member fits alone
    alone = check_against_cluster(jobs, cluster(SINFO), {"prep": 1})  # type: ignore[arg-type]
    assert not any("prep" in p or "prepare" in p for p in alone), alone


def test_group_components_from_args_and_profile(tmp_path: Path) -> None:
    from cohortseg.plan import group_components, one_job_per_group

    assert group_components(["--group-components", "prep=2", "x=3", "--jobs", "4"]) == {"prep": 2, "x": 3}
    # the shipped profiles group nothing (Snakemake's split group jobs after checkpoints are unreliable)
    assert group_components(["--profile", "profiles/slurm"]) == {}
    assert one_job_per_group(["--profile", "profiles/slurm"]) == []
    (tmp_path / "config.yaml").write_text("groups: [prepare=prep, metrics=light]\ngroup-components: [prep=4]\n")
    assert group_components(["--profile", str(tmp_path)]) == {"prep": 4}
    # the dry run of the plan forms one group job per group; the submissions are rebuilt from prep=4
    assert one_job_per_group(["--profile", str(tmp_path)]) == ["--group-components", "light=1000000", "prep=1000000"]
    assert one_job_per_group(["--groups", "prepare=prep", "--group-components", "prep=2"]) == \
        ["--group-components", "prep=1000000"]
