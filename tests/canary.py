"""The privacy canary's scanner: every path and every byte under the folders a workflow writes, with
compressed and embedded content decoded, searched for marker strings.

Decoded layers, recursively: gzip members (``.nii.gz``, ``.tsv.gz``...), zip members (TorchScript ``.ts``,
``torch.save`` ``.pt``, the Slicer package ``.zip``), and base64 ``data:`` URIs (Snakemake's HTML report
embeds every table and figure so; a plain grep of the report cannot see inside them). What cannot be
searched as bytes is stated, not pretended: text rendered into a figure's pixels."""

from __future__ import annotations

import base64
import gzip
import io
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DATA_URI = re.compile(rb"data:[^,\"'\s]{0,200}?;base64,([A-Za-z0-9+/=]+)")
MAX_DEPTH = 4


@dataclass
class Scan:
    files: list[str] = field(default_factory=list)
    decoded: list[str] = field(default_factory=list)  # "<file> > <layer> > ..." of every decoded blob
    hits: list[str] = field(default_factory=list)


def layers(label: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """``data`` and everything decoded from it: (label, bytes)."""
    yield label, data
    if depth >= MAX_DEPTH:
        return
    if data[:2] == b"\x1f\x8b":
        try:
            yield from layers(f"{label} > gzip", gzip.decompress(data), depth + 1)
        except (OSError, EOFError):
            pass
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    yield f"{label} > zip:{name}", name.encode()
                    yield from layers(f"{label} > zip:{name}", z.read(name), depth + 1)
        except zipfile.BadZipFile:
            pass
    if b"base64," in data:
        for k, m in enumerate(DATA_URI.finditer(data)):
            try:
                blob = base64.b64decode(m.group(1), validate=False)
            except ValueError:
                continue
            yield from layers(f"{label} > data-uri#{k}", blob, depth + 1)


def scan(roots: Iterable[Path], base: Path, needles: dict[str, str],
         skip: Callable[[str], bool] = lambda rel: False) -> Scan:
    """Search every path and (decoded) file under ``roots`` for ``needles`` (marker -> the field it names);
    ``skip(relative path)`` leaves out what is private by construction."""
    result = Scan()
    encoded = [(n.encode(), f) for n, f in needles.items()]
    for root in roots:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            rel = str(p.relative_to(base))
            if skip(rel):
                continue
            result.hits += [f"{f} in path {rel}" for n, f in needles.items() if n in rel]
            if not p.is_file() or p.is_symlink():
                continue
            result.files.append(rel)
            for label, blob in layers(rel, p.read_bytes()):
                if label != rel:
                    result.decoded.append(label)
                result.hits += [f"{f} in {label}" for n, f in encoded if n in blob]
    return result
