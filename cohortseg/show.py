"""Print the headline metrics of a summary.tsv: ``python -m cohortseg.show results/metrics/summary.tsv``."""

from __future__ import annotations

import sys

import pandas as pd


def main(path: str) -> None:
    d = pd.read_csv(path, sep="\t")
    d = d[d["metric"].isin(["dice", "iou", "hd95", "avg_hd"])]
    wide = d.pivot_table(index=["model", "label"], columns="metric", values="mean", sort=False).reset_index()
    n = d[d["metric"] == "dice"].set_index(["model", "label"])["n_cases"]
    wide["n"] = [int(n.loc[(m, lab)]) for m, lab in zip(wide["model"], wide["label"])]
    print("mean per model (folds: validation subjects; ensemble: held-out test subjects; distances in mm)")
    print(wide.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/metrics/summary.tsv")
