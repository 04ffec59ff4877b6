from pathlib import Path

from cohortseg.infer import run
from cohortseg.smk import setup

cfg = setup(snakemake)
i, o, p = snakemake.input, snakemake.output, snakemake.params
images = list(i.images) if hasattr(i, "images") else [i.image]
if hasattr(o, "preds"):  # one fold, its whole validation set, into a folder
    Path(o.preds).mkdir(parents=True, exist_ok=True)
    outs = [(str(Path(o.preds) / f"{c}.nii.gz"), str(Path(o.preds) / f"{c}.json")) for c in p.cases]
else:
    outs = [(o.pred, o.info)]
cases = [(c, img, pred, info) for c, img, (pred, info) in zip(p.cases, images, outs)]
run(cfg, p.name, cases, list(i.models), p.manifest, snakemake.threads)
