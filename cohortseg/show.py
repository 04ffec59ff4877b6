"""Print the headline metrics of a summary.tsv: ``python -m cohortseg.show results/metrics/summary.tsv``."""

from __future__ import annotations

import sys

import pandas as pd


def main(path: str) -> None:
    d = pd.read_csv(path, sep="\t")
    d = d[d["metric"].isin(["dice", "iou", "hd95", "avg_hd"])]
    wide = d.pivot_table(index=["model", "label"], columns="metric", values="mean", sort=False).reset_index()
    wide = wide[["model", "label", *[m for m in ("dice", "iou", "hd95", "avg_hd") if m in wide]]]
    first = d[d["metric"] == "dice"].set_index(["model", "label"])
    keys = list(zip(wide["model"], wide["label"]))
    wide["n"] = [int(first.loc[k, "n_cases"]) for k in keys]
    if "n_penalised" in first:  # one mask empty: distances set to the penalty, counted here
        wide["one_empty"] = [f"{int(first.loc[k, 'n_penalised'])}/{int(first.loc[k, 'n_cases'])}" for k in keys]
    print("mean per model (folds: validation subjects; ensemble: held-out test subjects; distances in mm;")
    print("one_empty: cases where prediction or reference is empty, their distances = metrics.empty_distance)")
    print(wide.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/metrics/summary.tsv")
