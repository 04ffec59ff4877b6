# `make demo`: whole pipeline on the embedded synthetic DICOM cohort (CPU, minutes).
# `make test`: every test. Both create .venv and install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
SNAKEMAKE := $(BIN)/snakemake
DEMO_CONFIG := config/demo.yaml
DEMO_DATA := data/demo
CORES ?= 2

.PHONY: install demo demo-data test lint plan repro locks nnunet-env clean clean-demo help

help:
	@echo "make demo   - generate the synthetic DICOM cohort and run the whole workflow on CPU"
	@echo "make test   - run every test (unit, Snakemake end-to-end, lint)"
	@echo "make plan   - dry run of the demo workflow"
	@echo "make repro  - reproducibility audit of the demo (re-executions compared by SHA-256, ICC)"
	@echo "make clean  - remove results/, logs/, private/, .snakemake/ and the demo data"

install: $(STAMP)

# torch goes in first with pip so that pip's own configuration (a local CPU wheel, an index)
# decides which build of the pinned version is taken; uv then installs the rest quickly and
# keeps that torch, since it already satisfies the pin. --compile-bytecode: uv, unlike pip, leaves
# the .pyc files to the first import, and where PYTHONDONTWRITEBYTECODE is set (containers, CI
# images, this project's machines) they are never written, so every job compiled pandas, scipy,
# MONAI and Snakemake from source again: seconds per job (README, Clusters).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip uv
	$(BIN)/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e ".[dev]"
	$(BIN)/python -m compileall -q cohortseg
	@touch $(STAMP)

$(DEMO_DATA)/cohort.json: | $(STAMP)
	$(BIN)/cohortseg demo-cohort $(DEMO_DATA) --subjects 16 --seed 7

demo-data: $(DEMO_DATA)/cohort.json

demo: $(STAMP) $(DEMO_DATA)/cohort.json
	@set -e; start=$$(date +%s); \
	$(SNAKEMAKE) --profile profiles/local --configfile $(DEMO_CONFIG) --cores $(CORES); \
	$(SNAKEMAKE) --configfile $(DEMO_CONFIG) --report results/report.html --cores 1 >logs/report.log 2>&1; \
	end=$$(date +%s); \
	echo ""; echo "demo finished in $$((end - start)) s"; \
	echo "  report:          results/report.html"; \
	echo "  comparison:      results/study/comparison.tsv (pairs.tsv: paired tests; models.tsv: size, time, memory)"; \
	echo "  selection:       results/study/selection.json (model or ensemble and post-processing, chosen on CV)"; \
	echo "  plans:           results/plans/plans.tsv (every automatic choice and why)"; \
	echo "  metrics:         results/metrics/summary.tsv (per case: results/metrics/cases.tsv)"; \
	echo "  cohort audit:    results/cohort/excluded.tsv, results/cohort/exclusion_summary.tsv"; \
	echo "  predictions:     results/predictions/study/ (the selection, in each subject's source space)"; \
	echo "  exported models: results/export/ (TorchScript, ONNX, 3D Slicer package; parity in export.json)"; \
	echo "  DICOM SEG:       private/dicomseg/ (identified, for the PACS; checks in results/dicomseg/)"; \
	echo "  model package:   results/model/ (selected weights, MODEL_CARD.md, checksums; cohortseg infer --package)"; \
	echo ""; cat results/cohort/summary.txt; echo ""; \
	$(BIN)/cohortseg show results

# the plan of the demo: header index, selection, split, conversion and the dataset/model plans run
# (seconds; the plans are printed first), then a dry run prints the
# jobs per rule with their resources; the rule graph and DAG go to results/plan/ (graphviz).
# PROFILE=profiles/slurm shows the resources and partitions a cluster run would request.
PROFILE ?= profiles/local
plan: $(STAMP) $(DEMO_DATA)/cohort.json
	$(BIN)/cohortseg plan --plans --graphs results/plan -- --profile $(PROFILE) --configfile $(DEMO_CONFIG)

# the reproducibility audit of the demo: the main run (if not done yet), then config repro.runs
# executions with 1 thread and one with 2 in repro/exec*/ (previous audit trees removed first),
# compared per stage; tables, dashboard and summary in results/repro/
repro: $(STAMP) $(DEMO_DATA)/cohort.json
	rm -rf repro results/repro
	$(SNAKEMAKE) --profile profiles/local --configfile $(DEMO_CONFIG) --cores $(CORES) repro
	@echo ""; cat results/repro/summary.txt; echo ""; \
	echo "  tables:    results/repro/stages.tsv, files.tsv, metrics_variability.tsv"; \
	echo "  dashboard: results/repro/dashboard.png (and section 7 of the report: snakemake --report)"

# the nnU-Net v2 baseline of benchmarks/bench_hippocampus.py, in an environment of its own: nnunetv2
# pulls timm and with it torchvision, and the only torchvision build reachable here is a CUDA one that
# fails to import beside CPU torch; nnU-Net's 3d_fullres training does not import it, so it is removed
nnunet-env: .venv-nnunet/.installed
.venv-nnunet/.installed: | $(STAMP)
	@test -x .venv-nnunet/bin/python || $(PYTHON) -m venv .venv-nnunet
	.venv-nnunet/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/uv pip install -q --compile-bytecode --python .venv-nnunet/bin/python "torch==2.13.0" "nnunetv2==2.8.1"
	$(BIN)/uv pip uninstall -q --python .venv-nnunet/bin/python torchvision
	.venv-nnunet/bin/python -c "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer"
	@touch $@

# lock files of the whole stack for x86-64 (A100 nodes; manylinux_2_34 because pylibjpeg-libjpeg's
# x86-64 wheels need glibc >= 2.31) and aarch64 (Grace-Hopper; wheels only, checked by tests/test_envs.py)
locks: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_34 \
	  --index-url https://pypi.org/simple --custom-compile-command "make locks" -q -o envs/locks/linux-64.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform aarch64-manylinux_2_28 \
	  --index-url https://pypi.org/simple --custom-compile-command "make locks" -q -o envs/locks/linux-aarch64.txt

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=25

lint: $(STAMP)
	$(SNAKEMAKE) --configfile $(DEMO_CONFIG) --lint

clean:
	rm -rf results logs private .snakemake repro $(DEMO_DATA)
