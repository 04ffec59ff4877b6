"""Back to the PACS: the DICOM SEGs built in ``private_dir/dicomseg/`` stored by DICOMweb STOW-RS
(dicomweb-client) or DIMSE C-STORE (``pacs.protocol: dimse``), re-identified only there (they carry the source series' patient and study modules).

Credentials come from the environment variable ``pacs.credentials_env`` or the file ``pacs.credentials_file``
("user:password"), never from the config. Each store is retried with doubling back-off (1, 2, 4 ... s) on
connection errors, time-outs and server errors; an authentication failure or a refusal is not retried.
``results/pacs/pushed.tsv`` says per pseudonymous subject whether its SEG was stored (no UID, no identifier);
a PACS that stores none of them is an error naming the URL and what to check (client, credentials and
retries: cohortseg.pacs).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pacs import PacsError, Unavailable, close_client, describe, make_client, with_retries
from .settings import PacsSettings, StageConfig
from .util import write_rows

log = logging.getLogger(__name__)
COLUMNS = ["subject", "status", "attempts", "reason"]


@dataclass(frozen=True)
class Config(StageConfig):
    pacs: PacsSettings


def store(client: Any, path: str | Path, settings: PacsSettings) -> int:
    """Store one SEG; the number of attempts it took."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    return with_retries(lambda: client.store_instances([ds]), settings, "store the SEG")[1]


def run(config: Config, records: list[str], seg_dirs: list[str], out: str | Path) -> list[dict[str, Any]]:
    """The stage: every written SEG of the shards' records stored; ``out`` the table of what happened."""
    from tqdm import tqdm

    todo = []
    for record, folder in zip(records, seg_dirs, strict=True):
        for subject, rec in sorted(json.loads(Path(record).read_text())["subjects"].items()):
            if rec["status"] == "ok":
                todo.append((subject, Path(folder) / f"{subject}.dcm"))
    client = make_client(config.pacs)
    rows: list[dict[str, Any]] = []
    t0 = time.time()
    try:
        desc = "C-STORE" if config.pacs.protocol == "dimse" else "STOW-RS"
        for subject, path in tqdm(todo, desc=desc, unit="SEG"):
            try:
                rows.append({"subject": subject, "status": "stored", "attempts": store(client, path, config.pacs),
                             "reason": ""})
            except PacsError as e:
                if not isinstance(e, Unavailable):
                    raise
                reason = f"{type(e).__name__} after {config.pacs.retries + 1} attempts"
                log.warning("%s: not stored: %s", subject, reason)
                rows.append({"subject": subject, "status": "failed", "attempts": config.pacs.retries + 1, "reason": reason})
            except Exception as e:  # noqa: BLE001 - the error is this subject's, recorded; the others go on
                reason = f"{type(e).__name__} after {config.pacs.retries + 1} attempts"
                log.warning("%s: not stored: %s", subject, reason)
                rows.append({"subject": subject, "status": "failed", "attempts": config.pacs.retries + 1, "reason": reason})
    finally:
        close_client(client)
    stored = sum(r["status"] == "stored" for r in rows)
    if todo and not stored:
        raise PacsError(f"the PACS at {describe(config.pacs)} stored none of {len(todo)} SEGs ({rows[0]['reason']}): "
                        + ("is it running, and are pacs.dimse's host, port and AE titles its own?"
                           if config.pacs.protocol == "dimse" else "is it running and is pacs.url its DICOMweb root?"))
    write_rows(out, rows, COLUMNS)
    log.info("%d of %d SEGs stored in %.1f s", stored, len(todo), time.time() - t0)
    return rows
