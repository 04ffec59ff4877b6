"""Conversion speed: cohortseg's convert step against dcm2niix (PyPI binary) on the same series.

Every series of the shared corpus of real DICOM that passes the corpus audit rules
(config/shared_corpus.yaml, 4D series included) is converted, in the same run, by
- baseline: ``dcm2niix -z i -1 -b n`` on a folder of links to the series' files;
- cohortseg: the whole convert step as the workflow runs it (anonymous links, ``convert.tool: auto``,
  header scrub, cleaned sidecar, gzip write),
and the two outputs' geometry is compared (shape, voxel grid within 1e-3 mm / 1e-4 rad after
reorienting both to RAS, voxel values).

Equal terms: the same compression (zlib level 1 on one thread: nibabel's default level for .nii.gz, and
dcm2niix's internal zlib ``-z i`` at ``-1``; its default is pigz at level 6), and the same process
start-up: each side's time holds exactly one process start per series, dcm2niix's (cohortseg's convert
runs dcm2niix too), and no Python interpreter start, which a prepare job pays once for all the subjects of
its shard (``python_start_s`` is printed for reference; bench_startup.py measures it per stage).
Prints key=value lines per series and overall; the headline ratio (total cohortseg time / total dcm2niix
time) comes last. Target <= 1.
Usage: .venv/bin/python benchmarks/bench_convert.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import pandas as pd  # noqa: E402

from cohortseg import qa  # noqa: E402
from cohortseg.config import load  # noqa: E402
from cohortseg.convert import convert_series, dcm2niix_exe, dcm2niix_output  # noqa: E402
from cohortseg.index import build_index  # noqa: E402
from cohortseg.pseudonym import Pseudonymiser  # noqa: E402
from cohortseg.select import effective_rules, select  # noqa: E402
from cohortseg.util import save_nifti, write_json  # noqa: E402


def run_dcm2niix(files: list[str], tmp: Path) -> tuple[float, nib.Nifti1Image]:
    src, out = tmp / "src", tmp / "out"
    src.mkdir()
    out.mkdir()
    for i, f in enumerate(files):
        (src / f"{i:05d}.dcm").symlink_to(f)
    t0 = time.perf_counter()
    subprocess.run([dcm2niix_exe(), "-z", "i", "-1", "-b", "n", "-f", "x", "-o", str(out), str(src)],
                   check=True, capture_output=True)
    dt = time.perf_counter() - t0
    return dt, nib.load(str(dcm2niix_output(sorted(out.glob("x*.nii.gz")))))


def run_cohortseg(files: list[str], correction: str, tmp: Path) -> tuple[float, nib.Nifti1Image]:
    t0 = time.perf_counter()
    img, meta = convert_series(files, "auto", correction, allow_4d=True)
    save_nifti(img, tmp / "image.nii.gz")
    write_json(tmp / "image.json", meta)
    dt = time.perf_counter() - t0
    return dt, nib.load(str(tmp / "image.nii.gz"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timings per series; the median is kept")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    root = Path(os.environ.get("COHORTSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "dicom"
    if not root.is_dir():
        sys.exit(f"shared corpus {root} not found (see ../shared/README.md)")
    cfg = load(REPO / "config" / "shared_corpus.yaml")
    df, private = build_index(root, Pseudonymiser(b"bench" * 8), cfg["index"]["postop_regex"], 0.2)
    inc, exc = select(df, effective_rules(cfg["select"]), cfg["select"]["tie_break"])
    passed = pd.concat([inc, exc[exc["reason"].isin(["not_chosen", "multi_volume"])]], ignore_index=True)
    tot_base = tot_ours = 0.0
    ratios, geometry_ok = [], 0
    for _, row in passed.sort_values("series").iterrows():
        files = private["series_files"][row["series"]]
        corr = row["geometry_correction"] if isinstance(row["geometry_correction"], str) else ""
        base_t, ours_t = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                t, ref = run_dcm2niix(files, Path(a))
                base_t.append(t)
                t, img = run_cohortseg(files, corr, Path(b))
                ours_t.append(t)
                c = qa.compare(img, ref)
        base, ours = statistics.median(base_t), statistics.median(ours_t)
        tot_base += base
        tot_ours += ours
        ratios.append(ours / base)
        same = c.ok()
        geometry_ok += same
        print(f"series={row['series']} files={len(files)} shape={'x'.join(map(str, img.shape))} "
              f"dcm2niix_s={base:.4f} cohortseg_s={ours:.4f} ratio={ours / base:.2f} "
              f"geometry_identical={same} voxels={c.voxels}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cohortseg.convert"], check=True, cwd=REPO)
    print(f"python_start_s={time.perf_counter() - t0:.3f}")
    print(f"series_converted={len(ratios)}")
    print(f"geometry_identical={geometry_ok}/{len(ratios)}")
    print(f"dcm2niix_total_s={tot_base:.3f}")
    print(f"cohortseg_total_s={tot_ours:.3f}")
    print(f"median_ratio_per_series={statistics.median(ratios):.2f}")
    print(f"max_ratio_per_series={max(ratios):.2f}")
    print(f"ratio={tot_ours / tot_base:.2f}")


if __name__ == "__main__":
    main()
