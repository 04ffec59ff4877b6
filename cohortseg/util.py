"""Small shared helpers: atomic writes, logging, seeding, devices, checksums, versions, NIfTI hygiene.

Shared by several stages (a stage never imports another stage's module), and light: nothing heavy
(torch, MONAI, TorchIO) is imported at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("cohortseg")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary file keeps the final suffixes (``.nii.gz``, ``.tsv``) so that
    writers that choose a format from the extension behave as for the final name.
    A failure leaves no partial output behind.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if mode is not None:
            os.chmod(tmp_path, mode)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike[str], text: str, mode: int | None = None) -> None:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any, mode: int | None = None) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", mode=mode)


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_tsv(path: str | os.PathLike[str], df: Any, mode: int | None = None) -> None:
    """Write a pandas DataFrame as TSV atomically, with stable float formatting."""
    with atomic_path(path, mode=mode) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6g", na_rep="NA")


def format_cell(value: Any) -> str:
    """A TSV cell as write_tsv writes it (pandas' conventions): %.6g floats, NA for a missing value."""
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NA"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "%.6g" % value
    return str(value)


def write_rows(path: str | os.PathLike[str], rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rows as a TSV atomically, cells as write_tsv writes them, without pandas."""
    lines = ["\t".join(columns)] + ["\t".join(format_cell(r.get(c)) for c in columns) for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """A TSV written by :func:`write_tsv` as rows of strings (empty for NA), without pandas: a light job that
    only looks rows up saves pandas' second of import."""
    import csv

    with open(path, newline="") as fh:
        return [{k: ("" if v == "NA" else v) for k, v in row.items()} for row in csv.DictReader(fh, delimiter="\t")]


def is_true(value: Any) -> bool:
    """A boolean column's cell as written to a TSV (True/true/1)."""
    return str(value).strip().lower() in ("true", "1")


def read_tsv(path: str | os.PathLike[str]) -> Any:
    import pandas as pd

    return pd.read_csv(path, sep="\t", keep_default_na=True, na_values=["NA"], dtype={"subject": str})


def setup_logging(logfile: str | os.PathLike[str] | None = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``logfile`` (the Snakemake ``log:``)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if logfile:
        Path(logfile).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # Third-party converters log source paths and header values at INFO/DEBUG;
    # those may carry identifiers, so they only ever reach us as errors we word ourselves.
    for noisy in ("dicom2nifti", "pydicom", "torchio", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; switch torch to deterministic algorithms."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def import_nibabel() -> Any:
    """nibabel, imported without its eager probe of pydicom when pydicom is not loaded yet.

    nibabel imports pydicom at import time (an optional package, for DICOM-in-NIfTI extensions and its
    nicom readers, neither of which cohortseg uses): 0.6 s of the 0.9 s nibabel costs a light job on two
    cores (bench_startup.py). With pydicom hidden during nibabel's import, nibabel records it as absent;
    pydicom itself stays importable afterwards for the code that needs it."""
    import sys

    if "nibabel" in sys.modules:
        return sys.modules["nibabel"]
    hide = "pydicom" not in sys.modules
    if hide:
        sys.modules["pydicom"] = None  # type: ignore[assignment]  # an ImportError for nibabel's probe
    try:
        import nibabel
    finally:
        if hide:
            del sys.modules["pydicom"]
    return nibabel


def resolve_device(name: str) -> Any:
    """The torch device for a configured ``auto | cpu | cuda`` (auto: CUDA when available)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the configured device is 'cuda' but no CUDA device is available")
    return torch.device(name)


PACKAGES = ("torch", "monai", "torchio", "numpy", "scipy", "pandas", "nibabel", "SimpleITK", "pydicom", "dicom2nifti",
            "dcm2niix", "snakemake", "matplotlib")


def package_versions() -> dict[str, str]:
    """Python's and the scientific stack's versions (provenance manifest, train.json)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(paths: list[str]) -> str:
    """One digest over several files, in the given order (file boundaries included)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def set_threads(n: int) -> None:
    import torch

    n = max(1, int(n))
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)


def save_torch(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically and reproducibly.

    ``torch.save`` to a path names the zip archive's root folder after the file, so saving through a
    random temporary name would make identical weights give different bytes; saving to memory uses a
    fixed archive name."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def scrub_nifti_header(img: Any) -> Any:
    """Blank the free-text NIfTI header fields that converters fill with identifiers."""
    hdr = img.header
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        if field in hdr:
            hdr[field] = b""
    return img


def save_nifti(img: Any, path: str | os.PathLike[str]) -> None:
    """Save a nibabel image atomically, free-text header fields blanked.

    An image read from a file with a scale (scl_slope/scl_inter) is written with its stored values
    and the same scale: nibabel would otherwise read the scaled floats and fit a new, lossy scale."""
    nib = import_nibabel()

    proxy = img.dataobj
    if nib.is_proxy(proxy) and hasattr(proxy, "get_unscaled") and (proxy.slope, proxy.inter) != (1.0, 0.0):
        stored = np.asanyarray(proxy.get_unscaled())
        img = nib.Nifti1Image(stored, img.affine, img.header)
        img.header.set_data_dtype(stored.dtype)
        img.header.set_slope_inter(proxy.slope, proxy.inter)
    scrub_nifti_header(img)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
