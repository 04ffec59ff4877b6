# cohortseg: PACS DICOM cohort -> selection audit -> NIfTI + dataset survey -> plans -> preprocessing
# -> k-fold training of every model -> fold ensembles -> selection and post-processing on cross-validation
# -> inference in source space -> DICOM SEG (-> PACS) -> metrics -> model comparison -> model package
# -> report.
# A table of contents: the rules live in rules/, their logic in the cohortseg package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/retrieve.smk"
include: "rules/index.smk"
include: "rules/select.smk"
include: "rules/prepare.smk"
include: "rules/split.smk"
include: "rules/plans.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/ensemble.smk"
include: "rules/infer.smk"
include: "rules/study.smk"
include: "rules/export.smk"
include: "rules/dicomseg.smk"
include: "rules/push.smk"
include: "rules/package.smk"
include: "rules/metrics.smk"
include: "rules/compare.smk"
include: "rules/report.smk"
include: "rules/provenance.smk"
include: "rules/repro.smk"


rule all:
    default_target: True
    input:
        all_targets,
