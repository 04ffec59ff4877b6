from pathlib import Path

from cohortseg.infer import run, write_shard_manifest
from cohortseg.smk import setup

cfg = setup(snakemake)
i, o, p = snakemake.input, snakemake.output, snakemake.params
if hasattr(o, "preds"):  # one fold, its whole validation set, into a folder
    folder = Path(o.preds)
    folder.mkdir(parents=True, exist_ok=True)
elif hasattr(o, "done"):  # the ensemble on a shard of subjects, listed in the shard's manifest
    folder = Path(p.folder)
else:
    folder = None
outs = [(str(folder / f"{c}.nii.gz"), str(folder / f"{c}.json")) for c in p.cases] if folder else [(o.pred, o.info)]
cases = [(c, img, pred, info) for c, img, (pred, info) in zip(p.cases, p.images, outs)]
run(cfg, p.name, cases, list(i.models), p.manifest, snakemake.threads)
if hasattr(o, "done"):
    write_shard_manifest(snakemake.wildcards.shard, cases, o.done)
