"""Reading a model package (``cohortseg.package`` writes it), shared by inference (``cohortseg infer
--package``) and the watch mode: the checksums are verified before any file is used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .util import sha256_file, write_text

CHECKSUMS = "checksums.sha256"


class PackageError(ValueError):
    """A package that cannot be used (the message names the file and what is wrong)."""


def write_checksums(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    write_text(folder / CHECKSUMS, "".join(f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files))


def verify(folder: str | Path) -> None:
    """Refuse a package whose files do not match ``checksums.sha256`` (changed, missing, or unlisted)."""
    folder = Path(folder)
    listing = folder / CHECKSUMS
    if not listing.is_file():
        raise PackageError(f"{folder} is not a cohortseg model package: it has no {CHECKSUMS}")
    listed = {}
    for line in listing.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    problems = [f"{n}: missing" for n in sorted(set(listed) - present)]
    problems += [f"{n}: not listed in {CHECKSUMS}" for n in sorted(present - set(listed))]
    problems += [f"{n}: checksum differs" for n in sorted(set(listed) & present)
                 if sha256_file(folder / n) != listed[n]]
    if problems:
        raise PackageError(f"model package {folder} refused: " + "; ".join(problems))


def open_package(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """A verified package's ensemble manifests (absolute fold paths), post-processing and card."""
    folder = Path(folder).resolve()
    verify(folder)
    card = json.loads((folder / "card.json").read_text())
    selection = json.loads((folder / "selection.json").read_text())
    manifests = []
    for model in selection["selected"]["models"]:
        path = folder / card["manifests"][model]
        manifest = json.loads(path.read_text())
        manifests.append({**manifest, "folds": [{**e, "path": str(path.parent / e["path"])} for e in manifest["folds"]]})
    return manifests, selection["postprocessing"], card
