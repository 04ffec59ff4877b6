"""Pseudonymous ids from a keyed hash (HMAC-SHA256), with the key kept private.

The key is created once per study in ``private_dir/key`` (mode 600) and never leaves it.
Ids are deterministic for a given key, so re-running the index keeps every subject's id;
without the key the ids cannot be linked back to a PatientID by hashing guesses.
"""

from __future__ import annotations

from typing import Any

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from .util import write_text

KEY_BYTES = 32
PRIVATE_MODE = 0o600
RAW_SUBDIR = "raw"  # private_dir/raw: the cohort retrieved from the PACS (cohortseg.retrieve), read by the index


class Pseudonymiser:
    def __init__(self, key: bytes, prefix: str = "sub-", length: int = 10) -> None:
        if len(key) < 16:
            raise ValueError("pseudonymisation key must be at least 16 bytes")
        self._key = key
        self.prefix = prefix
        self.length = length

    def digest(self, kind: str, value: str) -> str:
        msg = f"{kind}\x00{value}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def subject(self, patient_id: str) -> str:
        return f"{self.prefix}{self.digest('subject', patient_id)[: self.length]}"

    def series(self, series_uid: str) -> str:
        return f"ser-{self.digest('series', series_uid)[: self.length]}"

    def study(self, study_uid: str) -> str:
        return f"stu-{self.digest('study', study_uid)[: self.length]}"

    def file(self, path: str) -> str:
        return f"file-{self.digest('file', path)[: self.length]}"


def ensure_private_dir(private_dir: str | os.PathLike[str]) -> Path:
    d = Path(private_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def load_or_create_key(private_dir: str | os.PathLike[str]) -> bytes:
    """Return the study key, creating it (mode 600) on first use."""
    d = ensure_private_dir(private_dir)
    key_file = d / "key"
    if key_file.exists():
        mode = stat.S_IMODE(key_file.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(f"{key_file} is readable by others (mode {mode:o}); run chmod 600 on it")
        key = bytes.fromhex(key_file.read_text().strip())
    else:
        key = secrets.token_bytes(KEY_BYTES)
        write_text(key_file, key.hex() + "\n", mode=PRIVATE_MODE)
    return key


def from_settings(private_dir: str | os.PathLike[str], pseudonym: Any) -> Pseudonymiser:
    """The study's pseudonymiser: its key in ``private_dir`` (created on first use), ``pseudonym`` settings."""
    return Pseudonymiser(load_or_create_key(private_dir), prefix=pseudonym.prefix, length=pseudonym.length)
