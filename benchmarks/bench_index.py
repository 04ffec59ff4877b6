"""Index speed: headers/s of cohortseg's header scan against a full pydicom.dcmread of every file.

Builds a tree of >= 10,000 files by replicating the shared corpus of real DICOM (symbolic links,
so the bytes read are the corpus' own; the page cache is warmed for both sides first), then times
on the same files, in the same run:

- baseline: ``pydicom.dcmread(f)`` of every file (what a naive indexer does), in one process and with the
  same worker pool cohortseg uses (``--workers`` processes, same chunks);
- cohortseg's ``read_header`` in one process, and ``read_headers`` with ``--workers`` processes.

Each side is timed ``--repeats`` times (default 3), the sides taking turns, and its median kept. Prints key=value lines; every ratio
compares equal process counts. The headline ratio (one process against one process) comes last. Target >= 10.
Usage: .venv/bin/python benchmarks/bench_index.py [--files 10000] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cohortseg.index import list_files, read_header, read_headers  # noqa: E402


def dcmread_ok(f: str) -> bool:
    import pydicom

    try:
        pydicom.dcmread(f)
        return True
    except Exception:  # noqa: BLE001 - non-DICOM files fail here, as in a naive indexer
        return False


def dcmread_all(files: list[str], workers: int) -> int:
    """The baseline, with the pool and chunks of cohortseg.index.read_headers."""
    if workers <= 1:
        return sum(dcmread_ok(f) for f in files)
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(dcmread_ok, files, chunksize=max(64, len(files) // (8 * workers))))


def build_tree(src: Path, dst: Path, n_files: int) -> list[str]:
    corpus = [f for f in list_files(src) if not f.endswith((".nii", ".nii.gz", ".json", ".jsonl", ".md", ".txt", ".log"))]
    out: list[str] = []
    copy = 0
    while len(out) < n_files:
        for f in corpus:
            link = dst / f"copy{copy:03d}" / os.path.relpath(f, src)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f)
            out.append(str(link))
        copy += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side; the median is kept")
    ap.add_argument("--src", default=os.path.join(os.environ.get("COHORTSEG_SHARED_DATA", REPO.parent / "shared" / "data"), "dicom"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    src = Path(args.src)
    if not src.is_dir():
        sys.exit(f"shared corpus {src} not found (see ../shared/README.md)")
    with tempfile.TemporaryDirectory(prefix="bench-index-") as t:
        files = build_tree(src, Path(t), args.files)
        for f in {os.path.realpath(f) for f in files}:
            Path(f).read_bytes()  # warm the page cache: the tree is links to the same corpus files

        # the sides take turns within each repeat, so a drift in the machine's speed (shared hosts) hits
        # both alike; the median of each side's --repeats timings is kept
        sides = {"baseline": lambda: dcmread_all(files, 1),
                 "baseline_par": lambda: dcmread_all(files, args.workers),
                 "single": lambda: [read_header(f) for f in files],
                 "par": lambda: read_headers(files, args.workers)}
        times: dict[str, list[float]] = {k: [] for k in sides}
        results: dict[str, object] = {}
        for _ in range(args.repeats):
            for name, call in sides.items():
                t0 = time.perf_counter()
                results[name] = call()
                times[name].append(time.perf_counter() - t0)
        baseline, baseline_par, single, par = (statistics.median(times[k]) for k in sides)
        ok, heads = results["baseline"], results["single"]
        assert results["baseline_par"] == ok
        assert [h.tags for h in heads] == [h.tags for h in results["par"]]  # type: ignore[attr-defined]

    n = len(files)
    print(f"files={n}")
    print(f"dicom_files={ok}")
    print(f"cohortseg_ok_headers={sum(h.status == 'ok' for h in heads)}")
    w = args.workers
    print(f"repeats={args.repeats}")
    print(f"baseline_1_process_s={baseline:.3f}")
    print(f"baseline_1_process_headers_per_s={n / baseline:.1f}")
    print(f"baseline_{w}_workers_s={baseline_par:.3f}")
    print(f"baseline_{w}_workers_headers_per_s={n / baseline_par:.1f}")
    print(f"cohortseg_1_process_s={single:.3f}")
    print(f"cohortseg_1_process_headers_per_s={n / single:.1f}")
    print(f"cohortseg_{w}_workers_s={par:.3f}")
    print(f"cohortseg_{w}_workers_headers_per_s={n / par:.1f}")
    print(f"ratio_{w}_vs_{w}_workers={baseline_par / par:.2f}")
    print(f"ratio={baseline / single:.2f}")


if __name__ == "__main__":
    main()
