"""Watch mode (``cohortseg watch --model <package>``): new studies in the PACS segmented by a model package and
their DICOM SEG stored back, study by study, without a workflow run.

Each poll asks the PACS (QIDO-RS, the ``pacs.query`` date range and patients) for its studies. A study counts
as complete once its instance count has not changed for ``watch.stable_s`` seconds (Orthanc's StableAge, seen
through DICOMweb). A complete study not yet recorded is processed once:

1. its series pass the query-level keys (``pacs.query``: modality, description, instance count) and are
   retrieved by WADO-RS into ``private_dir/watch/<study pseudonym>/`` (private);
2. the header index and the selection rules (``index``, ``select``) choose its series exactly as for a
   cohort; none passing: the study is *rejected* with each series' reason;
3. the chosen series is converted (``convert``), segmented by the package (checksums verified once at start;
   its selection and post-processing, as ``cohortseg infer --package``), written as a DICOM SEG referencing
   that series (read back and compared, ``dicomseg``), and stored in the PACS by STOW-RS: *done*;
4. any error is the study's: *failed* with the error's type and message, the others go on.

Every study goes to ``results/watch/studies.tsv`` (pseudonyms, status, reason, seconds, voxels per label: no
identifier) and, by its UID, to ``private_dir/watch/state.json``, written atomically after each study: a
restarted watcher never processes a recorded study again (a failed one too: remove its entry to retry).
SIGTERM or SIGINT stop the watcher after the study in hand. The private work folder of a done or rejected
study is removed; a failed study's is kept for inspection.

This module is a service, not a stage of the DAG: like the command line it composes the stages' functions;
the stages themselves still import no other stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import (ConvertSettings, DicomSegSettings, IndexSettings, InferSettings, PacsSettings,
                       PrivacySettings, PseudonymSettings, SelectSettings, StageConfig, WatchSettings)
from .util import write_json, write_rows

log = logging.getLogger(__name__)
COLUMNS = ["n", "subject", "study", "series", "status", "reason", "n_series", "n_instances", "seconds", "voxels"]
N_STUDY_INSTANCES = "00201208"


@dataclass(frozen=True)
class Config(StageConfig):
    private_dir: str
    pseudonym: PseudonymSettings
    privacy: PrivacySettings
    index: IndexSettings
    select: SelectSettings
    convert: ConvertSettings
    infer: InferSettings
    dicomseg: DicomSegSettings
    pacs: PacsSettings
    seed: int
    deterministic: bool
    watch: WatchSettings


class Stop:
    """Set by SIGTERM/SIGINT: the watcher ends after the study in hand."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        log.info("signal %d: stopping after the study in hand", signum)
        self.requested = True


@dataclass
class Watcher:
    config: Config
    package: Path
    table: Path
    stop: Stop

    def __post_init__(self) -> None:
        from .infer import package_groups
        from .pacs import make_client
        from .pseudonym import ensure_private_dir, from_settings
        from .util import resolve_device, seed_everything

        seed_everything(self.config.seed, self.config.deterministic)
        self.device = resolve_device(self.config.infer.device)
        self.groups, self.postprocessing = package_groups(self.package, self.device)
        card = json.loads((self.package / "card.json").read_text())
        self.labels = tuple(card["labels"])
        self.model_name = "+".join(card["selection"]["models"])
        self.model_id = f"{card['name']}-v{card['version']}"
        self.work = ensure_private_dir(Path(self.config.private_dir) / "watch")
        self.pseudo = from_settings(self.config.private_dir, self.config.pseudonym)
        self.client = make_client(self.config.pacs)
        self.state_path = self.work / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"studies": {}, "pending": {}}
        self.rows = _read_rows(self.table)

    # -- polling -------------------------------------------------------------------------------------
    def complete_studies(self) -> list[dict[str, Any]]:
        """Studies not yet recorded whose instance count has been stable for ``watch.stable_s``."""
        from .retrieve import STUDY_UID, _value, query_studies

        now, ready, pending = time.time(), [], self.state["pending"]
        for st in query_studies(self.client, self.config.pacs, ("StudyDescription", "NumberOfStudyRelatedInstances")):
            uid = str(_value(st, STUDY_UID))
            if uid in self.state["studies"]:
                continue
            n = int(_value(st, N_STUDY_INSTANCES, 0) or 0)
            seen = pending.get(uid)
            if seen is None or seen["n"] != n:
                pending[uid] = seen = {"n": n, "since": now}
            if now - seen["since"] >= self.config.watch.stable_s:
                ready.append(st)
        return ready

    def poll(self) -> int:
        """One pass: every complete, unrecorded study processed; how many."""
        done = 0
        for st in self.complete_studies():
            if self.stop.requested:
                break
            self.process(st)
            done += 1
        self.save_state()
        return done

    # -- one study ------------------------------------------------------------------------------------
    def process(self, st: dict[str, Any]) -> None:
        from .retrieve import PATIENT_ID, STUDY_UID, _value

        uid, t0 = str(_value(st, STUDY_UID)), time.time()
        row = {"n": len(self.rows) + 1, "subject": self.pseudo.subject(str(_value(st, PATIENT_ID))),
               "study": self.pseudo.study(uid), "series": "", "status": "", "reason": "", "n_series": 0,
               "n_instances": 0, "voxels": ""}
        folder = self.work / row["study"]
        try:
            row.update(self.segment(st, folder))
        except Exception as e:  # noqa: BLE001 - the study's failure is recorded; the watcher goes on
            row.update(status="failed", reason=f"{type(e).__name__}: {_scrub(str(e), folder)}")
            log.exception("%s: failed", row["study"])
        row["seconds"] = round(time.time() - t0, 2)
        if row["status"] != "failed":
            shutil.rmtree(folder, ignore_errors=True)
        self.rows.append(row)
        self.state["studies"][uid] = {"status": row["status"], "n": row["n"]}
        self.state["pending"].pop(uid, None)
        write_rows(self.table, self.rows, COLUMNS)
        self.save_state()
        log.info("%s %s: %s %s (%.1f s)", row["subject"], row["study"], row["status"], row["reason"], row["seconds"])

    def segment(self, st: dict[str, Any], folder: Path) -> dict[str, Any]:
        import re

        from .retrieve import STUDY_DESC, _value

        wanted = self.config.pacs.query.study_description
        if wanted and not re.search(wanted, str(_value(st, STUDY_DESC)), re.I):
            return {"status": "rejected", "reason": "study description does not match pacs.query.study_description"}
        retrieved, info = self.retrieve(st, folder)
        if not retrieved:
            return {**info, "status": "rejected", "reason": info["reason"] or "no series passed the query keys"}
        chosen, reason = self.choose(folder / "raw")
        if chosen is None:
            return {**info, "status": "rejected", "reason": reason}
        series, series_files, correction = chosen
        voxels = self.predict_and_store(series_files, correction, folder)
        return {**info, "series": series, "status": "done", "voxels": json.dumps(voxels, sort_keys=True)}

    def retrieve(self, st: dict[str, Any], folder: Path) -> tuple[bool, dict[str, Any]]:
        """The study's series that pass the query keys, into ``folder/raw``; whether any was retrieved."""
        from tqdm import tqdm

        from .pseudonym import ensure_private_dir
        from .retrieve import SERIES_UID, STUDY_UID, _value, retrieve_series, series_reason
        from .pacs import with_retries

        study_uid = _value(st, STUDY_UID)
        series, _ = with_retries(lambda: self.client.search_for_series(
            study_instance_uid=study_uid, fields=["SeriesDescription", "NumberOfSeriesRelatedInstances"],
            get_remaining=True), self.config.pacs, "answer the series query")
        keep = [se for se in series if not series_reason(se, self.config.pacs.query)]
        reasons = sorted({series_reason(se, self.config.pacs.query) for se in series} - {""})
        raw = ensure_private_dir(ensure_private_dir(folder) / "raw")
        deadline = time.time() + 60 * self.config.pacs.retrieve_minutes
        n = 0
        with tqdm(desc="WADO-RS", unit="instance", mininterval=2, disable=None) as progress:
            for se in keep:
                uid = _value(se, SERIES_UID)
                n += retrieve_series(self.client, study_uid, uid, raw / self.pseudo.series(uid), self.config.pacs,
                                     deadline, progress)[0]
        return bool(keep), {"n_series": len(series), "n_instances": n, "reason": "; ".join(reasons)}

    def choose(self, raw: Path) -> tuple[tuple[str, list[str], str] | None, str]:
        """The series the selection rules choose in the study's folder (series id, its files, geometry
        correction), or None and the reasons of every series."""
        from .index import build_index
        from .select import apply_raw_descriptors, effective_rules, load_hook, select

        sel, idx = self.config.select, self.config.index
        df, private = build_index(raw, self.pseudo, idx.postop_regex, idx.slice_gap_tolerance, workers=1,
                                  descriptors=self.config.privacy.descriptors)
        rules_view = apply_raw_descriptors(df, private["descriptors"])  # the rules see the raw text, as in `select`
        included, excluded = select(rules_view, effective_rules(sel), list(sel.tie_break), None, load_hook(sel.hook),
                                    sel.tilt_tolerance_deg)
        if included.empty:
            reasons = sorted(f"{r['series']}: {r['reason']}" for r in excluded.to_dict("records"))
            return None, "no series passed the selection rules (" + "; ".join(reasons) + ")"
        row = included.iloc[0]
        correction = row.get("geometry_correction")
        return (str(row["series"]), list(private["series_files"][row["series"]]),
                correction if isinstance(correction, str) else ""), ""

    def predict_and_store(self, files: list[str], correction: str, folder: Path) -> dict[str, int]:
        from .convert import convert_series
        from .dicomseg import write_subject_seg
        from .infer import predict
        from .push import store
        from .util import save_nifti

        img, _ = convert_series(files, self.config.convert.tool, correction, descriptors=self.config.privacy.descriptors)
        save_nifti(img, folder / "image.nii.gz")
        pred, info, _ = predict(self.groups, self.config.infer, folder / "image.nii.gz", self.device, self.postprocessing)
        save_nifti(pred, folder / "prediction.nii.gz")
        write_subject_seg(folder / "prediction.nii.gz", files, folder / "seg.dcm", self.labels,
                          self.config.dicomseg.segments, self.model_id, self.model_name)
        store(self.client, folder / "seg.dcm", self.config.pacs)
        return dict(info["voxels"])

    def save_state(self) -> None:
        from .pseudonym import PRIVATE_MODE

        write_json(self.state_path, self.state, mode=PRIVATE_MODE)


def _scrub(message: str, folder: Path) -> str:
    """An error message without the private folder's path (its file names are UIDs)."""
    return message.replace(str(folder), "<study folder>")


def _read_rows(path: Path) -> list[dict[str, Any]]:
    from .util import read_rows

    return [dict(r) for r in read_rows(path)] if path.exists() else []


def run(config: Config, package: str | Path, table: str | Path = "results/watch/studies.tsv",
        max_polls: int | None = None) -> list[dict[str, Any]]:
    """Poll until stopped (SIGTERM/SIGINT) or ``max_polls`` polls; the run log's rows."""
    from .pacs import close_client

    stop = Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    watcher = None
    try:
        watcher = Watcher(config, Path(package), Path(table), stop)
        polls = 0
        while not stop.requested:
            n = watcher.poll()
            polls += 1
            log.info("poll %d: %d studies processed, %d recorded in all", polls, n, len(watcher.rows))
            if max_polls is not None and polls >= max_polls:
                break
            until = time.time() + config.watch.poll_s
            while time.time() < until and not stop.requested:
                time.sleep(min(0.5, config.watch.poll_s))
        return watcher.rows
    finally:
        if watcher is not None:
            close_client(watcher.client)
        for s, handler in previous.items():
            signal.signal(s, handler)
