"""The cohort from the PACS (``source: pacs``): QIDO-RS queries, series kept by the query keys before any
instance moves, WADO-RS retrieval into ``private_dir/raw/`` (or C-FIND and C-MOVE with ``pacs.protocol:
dimse``, cohortseg.dimse); then the usual index -> select -> ... DAG reads that folder as it reads a DICOM
export.

- Studies are queried by date range (``pacs.query.study_date``) and, when ``pacs.query.patients_file`` names
  a private list of PatientIDs, one query per patient; a study whose description does not match
  ``study_description`` is left out. Its series are kept by modality, description and the PACS's instance
  count; every series left out or failed gets its reason in ``results/cohort/retrieved.tsv`` under the
  pseudonyms the index gives (keyed hash of the study key): no UID, id or free text reaches that table.
- Retrieval is resumable: instances are stored as ``raw/<study>/<series>/<SOPInstanceUID>.dcm`` (private),
  atomically, and an instance already held is not asked for again. Each request is retried with back-off
  (cohortseg.pacs); a series whose retrieval fails (a study deleted meanwhile, a corrupt instance) gets the
  reason and the other series go on. The run stops at ``pacs.retrieve_minutes`` with an error saying how
  far it got; the next run resumes.
- Instances come as the PACS stores them (``application/dicom`` with any transfer syntax), so the converted
  NIfTI is the one of the same files read from disk (tests/test_retrieve.py compares checksums).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .pacs import AuthError, PacsError, close_client, make_client, with_retries
from .pseudonym import PRIVATE_MODE, RAW_SUBDIR, Pseudonymiser, ensure_private_dir, from_settings
from .settings import MaskSettings, PacsQuerySettings, PacsSettings, PseudonymSettings, StageConfig
from .util import atomic_path, write_rows

log = logging.getLogger(__name__)
COLUMNS = ["subject", "study", "series", "status", "reason", "modality", "n_instances", "n_retrieved", "n_held"]
AS_STORED = (("application/dicom", "*"),)  # no transcoding by the PACS


@dataclass(frozen=True)
class Config(StageConfig):
    private_dir: str
    pseudonym: PseudonymSettings
    pacs: PacsSettings
    masks: MaskSettings


def raw_dir(private_dir: str | Path) -> Path:
    """Where the retrieved instances are kept (the index reads it for ``source: pacs``)."""
    return Path(private_dir) / RAW_SUBDIR


def _value(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    values = item.get(tag, {}).get("Value", [])
    if not values:
        return default
    v = values[0]
    return v.get("Alphabetic", "") if isinstance(v, dict) else v


STUDY_UID, SERIES_UID, SOP_UID, PATIENT_ID = "0020000D", "0020000E", "00080018", "00100020"
STUDY_DESC, SERIES_DESC, MODALITY, N_INSTANCES = "00081030", "0008103E", "00080060", "00201209"
MASK_MODALITIES = ("SEG", "RTSTRUCT")


def patient_ids(query: PacsQuerySettings) -> list[str | None]:
    """The PatientIDs to query (None: every patient)."""
    if not query.patients_file:
        return [None]
    path = Path(query.patients_file)
    if not path.is_file():
        raise PacsError(f"pacs.query.patients_file {path} does not exist")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not ids:
        raise PacsError(f"pacs.query.patients_file {path} lists no PatientID")
    return list(dict.fromkeys(ids))


def query_studies(client: Any, settings: PacsSettings,
                  fields: tuple[str, ...] = ("StudyDescription",)) -> list[dict[str, Any]]:
    """Every study of the date range (and of the listed patients), by QIDO-RS, with ``fields`` too."""
    q = settings.query
    studies: dict[str, dict[str, Any]] = {}
    for pid in patient_ids(q):
        filters = {k: v for k, v in (("StudyDate", q.study_date), ("PatientID", pid)) if v}
        found, _ = with_retries(lambda f=filters: client.search_for_studies(  # type: ignore[misc]
            search_filters=f, fields=list(fields), get_remaining=True), settings, "answer the study query")
        for st in found:
            studies[_value(st, STUDY_UID)] = st
    return [studies[k] for k in sorted(studies)]


def series_reason(series: dict[str, Any], query: PacsQuerySettings) -> str:
    """Why a series is not retrieved ("" = it is); the reasons name the key, never the value (free text)."""
    if query.modalities and _value(series, MODALITY) not in query.modalities:
        return f"modality not in pacs.query.modalities {list(query.modalities)}"
    if query.series_description and not re.search(query.series_description, str(_value(series, SERIES_DESC)), re.I):
        return "series description does not match pacs.query.series_description"
    n = int(_value(series, N_INSTANCES, 0) or 0)
    if n < query.min_instances:
        return f"{n} instances, fewer than pacs.query.min_instances {query.min_instances}"
    return ""


def retrieve_series(client: Any, study_uid: str, series_uid: str, folder: Path, settings: PacsSettings,
                    deadline: float, progress: Any) -> tuple[int, int, int]:
    """(instances, retrieved now, held before) of one series; instances already held are skipped."""
    found, _ = with_retries(lambda: client.search_for_instances(
        study_instance_uid=study_uid, series_instance_uid=series_uid, get_remaining=True), settings,
        "list the series' instances")
    uids = sorted(str(_value(i, SOP_UID)) for i in found)
    if not uids:
        raise PacsError("the PACS lists no instance of the series any more (deleted during the retrieval?)")
    ensure_private_dir(folder.parent)
    ensure_private_dir(folder)
    if hasattr(client, "move_series"):  # DIMSE: one C-MOVE for the series (cohortseg.dimse), not one per instance
        return _move_series(client, study_uid, series_uid, uids, folder, settings, deadline, progress)
    new = held = 0
    for uid in uids:
        target = folder / f"{uid}.dcm"
        if target.exists():
            held += 1
            progress.update(1)
            continue
        if time.time() > deadline:
            raise TimeoutError
        ds, _ = with_retries(lambda u=uid: client.retrieve_instance(  # type: ignore[misc]
            study_uid, series_uid, u, media_types=AS_STORED), settings, "retrieve an instance")
        if why := damaged(ds):
            raise PacsError(f"an instance of the series is damaged in the PACS: {why}")
        with atomic_path(target, mode=PRIVATE_MODE) as tmp:
            ds.save_as(tmp)
        new += 1
        progress.update(1)
    return len(uids), new, held


def damaged(ds: Any) -> str:
    """Why a received instance cannot be whole ("" = it can): uncompressed pixel data shorter than Rows x
    Columns x frames x samples x bits says the PACS served a truncated file (pydicom reads what there is)."""
    if "PixelData" not in ds or not hasattr(ds, "file_meta") or ds.file_meta.get("TransferSyntaxUID") is None:
        return ""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return ""
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
                    * int(ds.get("SamplesPerPixel", 1) or 1) * int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        return ""
    got = len(ds.PixelData)
    return f"pixel data {got} of {expected} bytes" if got < expected else ""


def _move_series(client: Any, study_uid: str, series_uid: str, uids: list[str], folder: Path, settings: PacsSettings,
                 deadline: float, progress: Any) -> tuple[int, int, int]:
    held = sum((folder / f"{u}.dcm").exists() for u in uids)
    progress.update(held)
    if held < len(uids):
        if time.time() > deadline:
            raise TimeoutError
        with_retries(lambda: client.move_series(study_uid, series_uid, uids, folder, lambda: progress.update(1)),
                     settings, "move the series")
    return len(uids), len(uids) - held, held


def row(pseudo: Pseudonymiser, st: dict[str, Any], se: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"subject": pseudo.subject(str(_value(st, PATIENT_ID))), "study": pseudo.study(str(_value(st, STUDY_UID))),
            "series": pseudo.series(str(_value(se, SERIES_UID))), "modality": _value(se, MODALITY),
            "n_instances": int(_value(se, N_INSTANCES, 0) or 0), "n_retrieved": 0, "n_held": 0, "reason": "", **fields}


def plan(client: Any, config: Config, pseudo: Pseudonymiser) -> tuple[list[tuple[Any, Any]], list[dict[str, Any]]]:
    """The series to retrieve, and the rows of those left out at query level."""
    q = config.pacs.query
    keep, rows = [], []
    for st in query_studies(client, config.pacs):
        series, _ = with_retries(lambda s=st: client.search_for_series(  # type: ignore[misc]
            study_instance_uid=_value(s, STUDY_UID), fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"],
            get_remaining=True), settings=config.pacs, what="answer the series query")
        for se in series:
            if q.study_description and not re.search(q.study_description, str(_value(st, STUDY_DESC)), re.I):
                rows.append(row(pseudo, st, se, status="not_retrieved",
                                reason="study description does not match pacs.query.study_description"))
            elif config.masks.in_cohort and _value(se, MODALITY) in MASK_MODALITIES:
                keep.append((st, se))  # a radiologist's mask stored in the PACS (masks.in_cohort)
            elif why := series_reason(se, q):
                rows.append(row(pseudo, st, se, status="not_retrieved", reason=why))
            else:
                keep.append((st, se))
    return keep, rows


def run(config: Config, out: str | Path) -> list[dict[str, Any]]:
    """The stage: query, keep, retrieve (resumable); the table of every series the PACS offered."""
    from tqdm import tqdm

    ensure_private_dir(config.private_dir)
    pseudo = from_settings(config.private_dir, config.pseudonym)
    client = make_client(config.pacs)
    try:
        t0 = time.time()
        keep, rows = plan(client, config, pseudo)
        deadline = t0 + 60 * config.pacs.retrieve_minutes
        raw = ensure_private_dir(raw_dir(config.private_dir))
        total = sum(int(_value(se, N_INSTANCES, 0) or 0) for _, se in keep)
        desc = "C-MOVE" if config.pacs.protocol == "dimse" else "WADO-RS"
        with tqdm(total=total, desc=desc, unit="instance", mininterval=2) as progress:
            for st, se in keep:
                r = row(pseudo, st, se, status="retrieved")
                try:
                    n, new, held = retrieve_series(client, _value(st, STUDY_UID), _value(se, SERIES_UID),
                                                   raw / r["study"] / r["series"], config.pacs, deadline, progress)
                    r.update(n_instances=n, n_retrieved=new, n_held=held)
                except TimeoutError:
                    done = sum(x["n_instances"] for x in rows if x["status"] == "retrieved")
                    raise PacsError(f"retrieval stopped at pacs.retrieve_minutes ({config.pacs.retrieve_minutes}): "
                                    f"{done} of {total} instances held; run again to resume") from None
                except AuthError:
                    raise
                except Exception as e:  # noqa: BLE001 - this series' failure is recorded; the others go on
                    code = getattr(getattr(e.__cause__, "response", None), "status_code", None)
                    r.update(status="failed", reason=f"retrieval failed: {type(e).__name__}" + (f" (HTTP {code})" if code else ""))
                    log.warning("%s %s: %s", r["subject"], r["series"], r["reason"])
                rows.append(r)
    finally:
        close_client(client)
    rows.sort(key=lambda x: (x["subject"], x["study"], x["series"]))
    write_rows(out, rows, COLUMNS)
    n_ok = sum(x["status"] == "retrieved" for x in rows)
    log.info("%d series retrieved (%d instances new, %d already held), %d left out, %d failed, in %.1f s", n_ok,
             sum(x["n_retrieved"] for x in rows), sum(x["n_held"] for x in rows),
             sum(x["status"] == "not_retrieved" for x in rows), sum(x["status"] == "failed" for x in rows),
             time.time() - t0)
    return rows
