"""The per-subject steps in shards: DICOM conversion, mask import and the case's survey (its spacing, shape,
foreground intensities and label extents, for the plan). Preprocessing, which depends on the plan, is the
``preprocess`` stage, in shards of the cross-validation subjects.

Why shards. Snakemake spends a few milliseconds per job building its DAG, so one job per subject and
per step gives a 10,000-subject cohort 30,000 jobs and minutes of planning before the first job
starts (benchmarks/bench_plan.py); and every job pays a second or more of start-up, so jobs of one or
two subjects spend more time starting than working (bench_startup.py). A *shard* is the set of
subjects whose pseudonym (a keyed hash: uniformly spread) starts with the same ``b`` bits, with
``b = ceil(log2(n / prepare.subjects_per_job))`` for a cohort of ``n`` subjects: ``2^b`` jobs whose
average size is between half and all of ``subjects_per_job`` (they scatter around it: 43-63 subjects
for 208 at the default 64; 256 jobs of 20-55 for 10,000), named by their bits (``0110``; ``all`` when
one job holds the cohort).

The rule for a growing cohort: a subject keeps its shard while ``b`` stays the same, that is until the
cohort grows past ``subjects_per_job * 2^b``; then every shard splits in two, and a subject moves to the
half that extends its shard's name by one bit. Nothing is redone by a split: each subject has a stamp
(hash of the stage's code and of the config sections that shape its files, its selected series' row,
the size and mtime of its DICOM files and mask; not the job size) and a subject whose stamp and outputs
are unchanged is skipped, so the new shard jobs only check and list their subjects. A shard job
prepares its subjects in parallel (its ``threads``). ``cohortseg prepare SUBJECT`` redoes one subject;
``snakemake --forcerun prepare`` re-checks every shard (and redoes only subjects whose stamp is stale or
whose files are gone).

A subject that fails is reported with its pseudonym and reason; the other subjects of the shard are
still prepared, then the shard job fails (its manifest is the proof that all its subjects are ready).
"""

from __future__ import annotations

import hashlib
import math
import json
import logging
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .settings import ConvertSettings, MaskSettings, PrepareSettings, PrivacySettings, PseudonymSettings, StageConfig
from .util import read_rows, write_json, write_text

log = logging.getLogger(__name__)
STAMP = ".prepare-stamp"


@dataclass(frozen=True)
class Config(StageConfig):
    """The sections the stage reads: part of the rule's params and of every subject's stamp."""

    source: str
    convert: ConvertSettings
    labels: tuple[str, ...]
    seed: int
    prepare: PrepareSettings
    pseudonym: PseudonymSettings
    privacy: PrivacySettings
    masks: MaskSettings


@dataclass(frozen=True)
class Folders:
    """Where a shard's subjects go: results/nifti/<subject>/."""

    nifti: str


# the config sections that shape a subject's files: its stamp hashes these (not the job size)
SUBJECT_SECTIONS = ("source", "convert", "labels", "privacy", "seed")
ALL = "all"


def shard_bits(n_subjects: int, per_job: int) -> int:
    """Bits of the pseudonym that name a shard: the fewest whose shards average at most ``per_job`` subjects."""
    if per_job < 1:
        raise ValueError(f"prepare.subjects_per_job must be >= 1, got {per_job}")
    return 0 if n_subjects <= per_job else math.ceil(math.log2(n_subjects / per_job))


def shard_of(subject: str, prefix: str, bits: int) -> str:
    """The shard of a pseudonymous subject id: the first ``bits`` bits of its hex digits (``all`` for 0)."""
    if bits == 0:
        return ALL
    digits = subject[len(prefix): len(prefix) + -(-bits // 4)]
    return format(int(digits, 16), f"0{4 * len(digits)}b")[:bits]


def shards(subjects: list[str], prefix: str, per_job: int) -> dict[str, list[str]]:
    """{shard: sorted subjects} of a cohort cut into shards of ``per_job`` subjects on average (at most)."""
    bits = shard_bits(len(subjects), per_job)
    out: dict[str, list[str]] = {}
    for s in sorted(subjects):
        out.setdefault(shard_of(s, prefix, bits), []).append(s)
    return out


def subject_files(subject: str, folders: Folders, labelled: bool = True) -> dict[str, str]:
    """Every file ``prepare`` writes for a subject (labelled subjects also get their label on the image grid)."""
    n = Path(folders.nifti) / subject
    files = {"image": n / "image.nii.gz", "sidecar": n / "image.json", "survey": n / "survey.json"}
    if labelled:
        files["label"] = n / "label.nii.gz"
    return {k: str(v) for k, v in files.items()}


def write_survey(config: Config, subject: str, files: dict[str, str]) -> None:
    """The case's survey (cohortseg.survey) from the converted image and label, for the plan."""
    from .survey import case_survey
    from .volume import check_image, read_volume

    image = read_volume(files["image"])
    check_image(image.data, subject)  # NaN, infinite or constant: refused here, before any plan counts it
    label = read_volume(files["label"]).data if "label" in files else None
    modality = json.loads(Path(files["sidecar"]).read_text()).get("Modality")
    write_json(files["survey"], {"subject": subject, **case_survey(image.data, label, image.affine, len(config.labels),
                                                                     modality, config.seed)})


def _stat(path: str) -> list[Any]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def mask_paths(mask: str | list[str] | None) -> list[str]:
    """The mask file, or the cohort's mask objects (``masks.in_cohort``: candidates), as a list."""
    return [] if mask is None else [mask] if isinstance(mask, str) else list(mask)


def subject_key(code: str, row: dict[str, Any], files: list[str], mask: str | list[str] | None) -> str:
    """Stamp of a subject's inputs: code/config fingerprint, selected row, size and mtime of every input file.

    Only the digest is stored: the input paths name patients and never reach results/."""
    h = hashlib.sha256()
    h.update(json.dumps([code, {k: str(v) for k, v in sorted(row.items())}], sort_keys=True).encode())
    for f in files:
        h.update(json.dumps(_stat(f)).encode())
    h.update(json.dumps([_stat(m) for m in mask_paths(mask)] if mask else None).encode())
    return h.hexdigest()


def _scrub(msg: str, paths: list[str]) -> str:
    """Remove input paths (which may carry patient names) from an error message."""
    for p in sorted({q for f in paths for q in (f, os.path.dirname(f)) if q and q != "/"}, key=len, reverse=True):
        msg = msg.replace(p, "<input>")
    return msg


def prepare_subject(config: Config, code: str, subject: str, row: dict[str, Any], files: list[str],
                    mask: str | list[str] | None, folders: Folders, force: bool = False) -> dict[str, Any]:
    """Convert, import the mask and survey one subject unless its stamp says it is up to date."""
    from .convert import convert_subject

    t0 = time.time()
    out = subject_files(subject, folders, labelled=mask is not None)
    try:
        key = subject_key(code, row, files, mask)
    except OSError as exc:
        return {"status": "failed", "reason": _scrub(f"input not readable: {exc}", files + mask_paths(mask))}
    stamp = Path(folders.nifti) / subject / STAMP
    if not force and stamp.exists() and stamp.read_text() == key and all(os.path.exists(p) for p in out.values()):
        return {"status": "ok", "skipped": True, "seconds": 0.0, "files": out}
    stamp.unlink(missing_ok=True)
    try:
        convert_subject(config.source, config.convert.tool, subject, row, files, out["image"], out["sidecar"],
                        config.privacy.descriptors)
        if mask is not None:
            import_mask_of(config, subject, out, mask, files)
        write_survey(config, subject, out)
    except Exception as exc:  # one subject's failure is reported; the shard's others go on
        reason = _scrub(f"{type(exc).__name__}: {exc}", files + mask_paths(mask))
        log.error("%s: failed: %s", subject, reason)
        log.debug("%s", _scrub(traceback.format_exc(), files + mask_paths(mask)))
        return {"status": "failed", "reason": reason}
    write_text(stamp, key)
    return {"status": "ok", "skipped": False, "seconds": round(time.time() - t0, 3), "files": out}


def import_mask_of(config: Config, subject: str, out: dict[str, str], mask: str | list[str], files: list[str]) -> None:
    """The subject's label from its mask file, or from the first of the cohort's mask objects that fits the
    selected series (its reference checks); none fitting: the reason of each."""
    from .convert import ConversionError, mask_subject

    series_files = files if config.source != "nifti" else None
    if isinstance(mask, str):
        mask_subject(len(config.labels), subject, out["image"], mask, out["label"], config.labels, series_files,
                     config.masks.segment_codes)
        return
    reasons = []
    for n, candidate in enumerate(mask, start=1):
        try:
            mask_subject(len(config.labels), subject, out["image"], candidate, out["label"], config.labels, series_files,
                         config.masks.segment_codes)
            log.info("%s: mask from the cohort's mask object %d of %d", subject, n, len(mask))
            return
        except ConversionError as exc:
            reasons.append(f"object {n}: {str(exc).removeprefix(f'{subject} mask: ')}")
    raise ConversionError(f"{subject}: none of the {len(mask)} mask objects in the cohort fits the selected series "
                          f"({'; '.join(reasons)})")


def _worker(args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    from .volume import limit_threads

    limit_threads(1)  # one subject per worker process, one thread each
    return args[2], prepare_subject(*args)


def run(config: Config, shard: str, included_tsv: str | Path, series_files_json: str | Path,
        masks_json: str | Path, manifest_out: str | Path | None, code: str, folders: Folders, threads: int = 1,
        only: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """Prepare every subject of ``shard`` (or just ``only``) into ``folders``; write the shard manifest if
    all succeeded. ``manifest_out`` None: prepare without writing a manifest (``cohortseg prepare SUBJECT``)."""
    included = read_rows(included_tsv)
    bits = shard_bits(len(included), config.prepare.subjects_per_job)
    inc = [r for r in included if shard_of(r["subject"], config.pseudonym.prefix, bits) == shard]
    if only:
        unknown = sorted(set(only) - {r["subject"] for r in inc})
        if unknown:
            raise ValueError(f"not included subjects of shard {shard}: {', '.join(unknown)}")
        inc = [r for r in inc if r["subject"] in only]
    if not inc:
        raise ValueError(f"shard {shard!r} has no included subject in {included_tsv}")
    series_files = json.loads(Path(series_files_json).read_text())
    masks = json.loads(Path(masks_json).read_text())
    jobs = [(config, code, r["subject"], r, series_files[r["series"]], masks.get(r["subject"]), folders, force)
            for r in inc]
    t0 = time.time()
    results: dict[str, dict[str, Any]] = {}
    from .volume import limit_threads

    limit_threads(threads)
    if threads > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(min(threads, len(jobs)), mp_context=mp.get_context("fork")) as pool:
            for subject, res in pool.map(_worker, jobs):
                results[subject] = res
    else:
        for j in jobs:
            results[j[2]] = prepare_subject(*j)
    for s, r in results.items():
        if r["status"] == "ok":
            log.info("%s: %s in %.1f s", s, "up to date" if r["skipped"] else "prepared", r["seconds"])
    failed = {s: r["reason"] for s, r in results.items() if r["status"] != "ok"}
    # the manifest records the shard's state (bitwise the same whatever was redone); counts and times go to the log
    manifest = {"shard": shard, "n_subjects": len(results), "code": code,
                "subjects": {s: r["files"] for s, r in sorted(results.items()) if r["status"] == "ok"}}
    n_prepared = sum(not r.get("skipped", True) for r in results.values())
    if failed:
        lines = "\n".join(f"  {s}: {why}" for s, why in sorted(failed.items()))
        raise RuntimeError(f"shard {shard}: {len(failed)} of {len(results)} subjects failed (the others are "
                           f"prepared; fix and rerun, only these are redone):\n{lines}")
    if manifest_out is not None:
        write_json(manifest_out, manifest)
    log.info("shard %s: %d subjects, %d prepared, %d up to date, %.1f s", shard, manifest["n_subjects"],
             n_prepared, manifest["n_subjects"] - n_prepared, time.time() - t0)
    return {**manifest, "n_prepared": n_prepared}
