from cohortseg.metrics import run
from cohortseg.smk import setup

cfg = setup(snakemake)
i, o = snakemake.input, snakemake.output
pairs = [(m, s, f"results/predictions/{m}/{s}.nii.gz", f"results/nifti/{s}/label.nii.gz") for m, s in snakemake.params.pairs]
pred_info = [p.replace(".nii.gz", ".json") for _, _, p, _ in pairs]
run(cfg, pairs, list(i.train_info), pred_info, o.cases, o.summary, o.timing)
