"""Series selection: declarative rejection rules, one series per subject, and the cohort audit.

A rule is ``{reason: code, reject_if: condition}``; rules are tried in order and a series is
rejected with the reason of the first that holds. Conditions:

- ``{field: F, equals: V}`` (booleans and strings compared case-insensitively),
- ``{field: F, in: [V, ...]}``, ``{field: F, regex: R}`` (case-insensitive search),
- ``{field: F, min: X}`` / ``{field: F, max: X}`` (holds when the value is >= X / <= X),
- ``{field: F, missing: true}`` (empty or NA),
- ``{orientation: [plane, ...], within_deg: X}`` (the series' plane is one of those and its
  slice normal lies within X degrees of that plane's axis),
- ``{not: C}``, ``{any: [C, ...]}``, ``{all: [C, ...]}``.

``select.override`` replaces the condition of named rules (``null`` drops one), so a study
changes one threshold without repeating the list. ``select.gantry_tilt`` and
``select.uneven_spacing`` = ``reject`` add the rules ``gantry_tilt`` / ``uneven_spacing``; with
``correct`` (default) such series pass, are flagged in ``geometry_correction`` and the converter
resamples them onto a regular grid.

Of the series that pass, the tie-break keys (``most_slices``, ``thinnest``, ``latest``,
``earliest``, then series number and id for a total order) pick one per subject.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .descriptors import KEEP_WARNING, SERIES_DESCRIPTORS
from .settings import PrivacySettings, SelectSettings, StageConfig
from .util import log, read_rows, read_tsv, write_text, write_tsv


@dataclass(frozen=True)
class Config(StageConfig):
    source: str
    select: SelectSettings
    privacy: PrivacySettings

Condition = Mapping[str, Any]
REASON_TEXT = {
    "unreadable": "unreadable or corrupt files",
    "truncated": "truncated files (pixel data cut short)",
    "not_dicom": "non-DICOM files",
    "dicomdir": "DICOMDIR index files",
    "empty_folder": "empty folders",
    "undecodable": "with a transfer syntax no installed decoder reads",
    "not_a_volume": "not a volume (all images at one position)",
    "multi_volume": "4D / multi-volume series",
    "gantry_tilt": "with gantry tilt",
    "uneven_spacing": "with uneven slice spacing",
    "not_image": "not an image (SR, presentation state, ...)",
    "wrong_modality": "wrong modality",
    "localizer": "localizers",
    "derived": "derived or secondary-capture series",
    "postoperative": "post-operative",
    "not_t1": "not T1-weighted",
    "no_contrast": "without contrast",
    "missing_slices": "with missing slices",
    "inconsistent_geometry": "with inconsistent geometry",
    "too_few_slices": "with too few slices",
    "wrong_plane": "in a non-accepted plane",
    "not_chosen": "passed the rules but lost the tie-break",
    "no_mask": "without a ground-truth mask",
    # a cohort from the PACS (cohortseg.retrieve): series decided before retrieval
    "not_retrieved": "left in the PACS by the query keys (pacs.query; the key in `detail`)",
    "retrieval_failed": "whose retrieval from the PACS failed (the error in `detail`)",
    # NIfTI cohorts (cohortseg.nifti_cohort)
    "not_3d": "not a 3D volume",
    "nan_image": "with NaN or infinite voxels",
    "geometry_mismatch": "whose label's shape, spacing or affine differs from the image's",
    "undeclared_label": "with label values not declared in config labels",
    "empty_label": "with an empty label",
    "duplicate_case": "with a case name used twice",
}


class RuleError(ValueError):
    pass


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _eq(a: Any, b: Any) -> bool:
    if _is_missing(a):
        return False
    if isinstance(b, bool):
        s = str(a).strip().lower()
        return s in ("true", "1", "1.0") if b else s in ("false", "0", "0.0")
    if isinstance(b, (int, float)):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return str(a).strip().lower() == str(b).strip().lower()


def evaluate(cond: Condition, row: Mapping[str, Any]) -> bool:
    """Evaluate one condition on one series row."""
    if "not" in cond:
        return not evaluate(cond["not"], row)
    if "any" in cond:
        return any(evaluate(c, row) for c in cond["any"])
    if "all" in cond:
        return all(evaluate(c, row) for c in cond["all"])
    if "orientation" in cond:
        planes = cond["orientation"]
        planes = [planes] if isinstance(planes, str) else list(planes)
        bad = set(planes) - {"axial", "coronal", "sagittal"}
        if bad or set(cond) - {"orientation", "within_deg"}:
            raise RuleError(f"orientation condition takes planes axial/coronal/sagittal and within_deg: {dict(cond)}")
        if "plane" not in row or "obliquity_deg" not in row:
            raise RuleError("orientation condition needs the columns plane and obliquity_deg")
        if str(row["plane"]) not in planes:
            return False
        tol = float(cond.get("within_deg", 45.0))
        return not _is_missing(row["obliquity_deg"]) and float(row["obliquity_deg"]) <= tol
    if "field" not in cond:
        raise RuleError(f"condition needs 'field', 'orientation', 'not', 'any' or 'all': {dict(cond)}")
    name = cond["field"]
    if name not in row:
        raise RuleError(f"unknown field {name!r} in selection rule; fields are the columns of series.tsv")
    v = row[name]
    ops = set(cond) - {"field"}
    if len(ops) != 1:
        raise RuleError(f"condition on {name!r} needs exactly one operator, got {sorted(ops)}")
    op = ops.pop()
    target = cond[op]
    if op == "equals":
        return _eq(v, target)
    if op == "in":
        return any(_eq(v, t) for t in target)
    if op == "regex":
        return not _is_missing(v) and re.search(target, str(v), re.I) is not None
    if op in ("min", "max"):
        if _is_missing(v):
            return False
        try:
            x = float(v)
        except (TypeError, ValueError):
            return False
        return x >= float(target) if op == "min" else x <= float(target)
    if op == "missing":
        return _is_missing(v) == bool(target)
    raise RuleError(f"unknown operator {op!r} on field {name!r}")


def check_rules(rules: list[Mapping[str, Any]], columns: list[str]) -> None:
    """Fail early, with the rule named, on a rule that refers to an unknown field or operator."""
    dummy = {c: None for c in columns}
    for i, rule in enumerate(rules):
        if "reason" not in rule or "reject_if" not in rule:
            raise RuleError(f"select.rules[{i}] needs 'reason' and 'reject_if'")
        try:
            evaluate(rule["reject_if"], dummy)
        except RuleError as exc:
            raise RuleError(f"select.rules[{i}] ({rule['reason']}): {exc}") from None


UNEVEN_RULE = {"reason": "uneven_spacing", "reject_if": {"field": "slice_gaps_uneven", "equals": True}}


def effective_rules(sel: SelectSettings | Mapping[str, Any]) -> list[dict[str, Any]]:
    """select.rules with select.override applied and the geometry rules the config asks for (``sel``:
    the typed section, or the validated ``select`` dict).

    The gantry_tilt / uneven_spacing rules, when ``reject``, go just after ``missing_slices`` (or
    at the end), so a series that is also of the wrong modality, a localizer or missing a slice
    keeps that reason."""
    if not isinstance(sel, SelectSettings):
        sel = SelectSettings.from_dict(sel)
    rules = [dict(r) for r in sel.rules]
    names = [r["reason"] for r in rules]
    override = sel.override or {}
    for reason in override:
        if reason not in names:
            raise RuleError(f"select.override names {reason!r}, which is not a rule in select.rules ({', '.join(names)})")
    rules = [{"reason": r["reason"], "reject_if": override.get(r["reason"], r["reject_if"])} for r in rules]
    rules = [r for r in rules if r["reject_if"] is not None]
    extra = []
    if sel.gantry_tilt == "reject":
        extra.append({"reason": "gantry_tilt", "reject_if": {"field": "gantry_tilt_deg", "min": sel.tilt_tolerance_deg}})
    if sel.uneven_spacing == "reject":
        extra.append(dict(UNEVEN_RULE))
    names = [r["reason"] for r in rules]
    at = names.index("missing_slices") + 1 if "missing_slices" in names else len(rules)
    return rules[:at] + extra + rules[at:]


def geometry_correction(row: Mapping[str, Any], tilt_tol: float) -> str:
    """What the converter has to correct for a series that passed: '', 'gantry_tilt', 'uneven_spacing' or both."""
    parts = []
    tilt = row.get("gantry_tilt_deg")
    if not _is_missing(tilt) and float(tilt) >= tilt_tol:
        parts.append("gantry_tilt")
    if _eq(row.get("slice_gaps_uneven"), True):
        parts.append("uneven_spacing")
    return "+".join(parts)


def first_reason(rules: list[Mapping[str, Any]], row: Mapping[str, Any]) -> str | None:
    for rule in rules:
        if evaluate(rule["reject_if"], row):
            return str(rule["reason"])
    return None


def _sort_spec(tie_break: list[str]) -> tuple[list[str], list[bool]]:
    cols, asc = [], []
    for key in tie_break:
        if key == "most_slices":
            cols.append("n_slices"); asc.append(False)
        elif key == "thinnest":
            cols.append("_spacing"); asc.append(True)
        elif key == "latest":
            cols.append("study_order"); asc.append(False)
        elif key == "earliest":
            cols.append("study_order"); asc.append(True)
        else:
            raise RuleError(f"unknown tie-break key {key!r}")
    return cols + ["series_number", "series"], asc + [True, True]


def select(
    series: pd.DataFrame,
    rules: list[Mapping[str, Any]],
    tie_break: list[str],
    subjects_with_mask: set[str] | None = None,
    hook: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    tilt_tolerance_deg: float = 0.5,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (included: one row per subject, excluded: every rejected series with a reason)."""
    check_rules(rules, list(series.columns))
    df = series.copy()
    records = df.to_dict("records")
    df["geometry_correction"] = [geometry_correction(r, tilt_tolerance_deg) if r.get("status") == "ok" else "" for r in records]
    df["reason"] = [first_reason(rules, r) for r in records]
    # how many rules a series fails: the subject-level summary names the candidate that came closest
    df["n_failed_rules"] = [sum(evaluate(rule["reject_if"], r) for rule in rules) for r in records]
    if hook is not None:
        df = hook(df)
    passed = df[df["reason"].isna()].copy()
    passed["_spacing"] = passed["slice_spacing"].fillna(passed["slice_thickness"]).fillna(1e9)
    cols, asc = _sort_spec(tie_break)
    passed = passed.sort_values(cols, ascending=asc, kind="stable", na_position="last")
    chosen = passed.groupby("subject", sort=True).head(1)
    losers = passed.drop(chosen.index)
    df.loc[losers.index, "reason"] = "not_chosen"
    included = chosen.drop(columns=["_spacing", "reason", "n_failed_rules"]).sort_values("subject").reset_index(drop=True)
    if subjects_with_mask is not None:
        included["has_mask"] = included["subject"].isin(subjects_with_mask)
    excluded = df[df["reason"].notna()].reset_index(drop=True)
    excluded = excluded[["subject", "study", "series", "reason"] + [c for c in df.columns if c not in ("subject", "study", "series", "reason")]]
    return included, excluded


def summarise(series: pd.DataFrame, included: pd.DataFrame, excluded: pd.DataFrame,
              rule_order: list[str] | None = None) -> tuple[pd.DataFrame, str]:
    """Counts per reason (series and subjects) and the subjects left without a usable series.

    A subject without a usable series is counted once, under the reason of its closest candidate:
    the series failing the fewest rules (ties: the one rejected by the later rule in ``rule_order``)."""
    all_subjects = sorted(s for s in series["subject"].unique() if s != "unknown")
    inc = set(included["subject"])
    lost = [s for s in all_subjects if s not in inc]
    rows = []
    for reason, grp in excluded.groupby("reason", sort=False):
        rows.append({"level": "series", "reason": reason, "count": len(grp), "subjects": grp["subject"].nunique(),
                     "description": REASON_TEXT.get(str(reason), str(reason))})
    rows.sort(key=lambda r: (-r["count"], r["reason"]))
    order = list(rule_order or []) + ["not_chosen"]
    subj_reason: dict[str, str] = {}
    for s in lost:
        cand = excluded.loc[excluded["subject"] == s, ["reason", "n_failed_rules"]]
        ranked = sorted(zip(cand["n_failed_rules"], cand["reason"]),
                        key=lambda nr: (nr[0], -order.index(nr[1]) if nr[1] in order else 0))
        subj_reason[s] = ranked[0][1] if ranked else "no_series"
    subj_counts: dict[str, int] = {}
    for r in subj_reason.values():
        subj_counts[r] = subj_counts.get(r, 0) + 1
    for r, n in sorted(subj_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append({"level": "subject", "reason": f"no_usable_series:{r}", "count": n, "subjects": n,
                     "description": f"subjects without a usable series (best candidate: {REASON_TEXT.get(r, r)})"})
    flagged = included["geometry_correction"].fillna("") if "geometry_correction" in included else pd.Series([], dtype=str)
    for corr, n in flagged[flagged != ""].value_counts().sort_index().items():
        rows.append({"level": "flag", "reason": f"corrected:{corr}", "count": int(n), "subjects": int(n),
                     "description": f"included series resampled onto a regular grid on conversion ({corr.replace('+', ' and ')})"})
    table = pd.DataFrame(rows, columns=["level", "reason", "count", "subjects", "description"])
    parts = [f"{r['count']} {REASON_TEXT.get(r['reason'], r['reason'])}" for r in rows if r["level"] == "series"]
    text = (
        f"{len(all_subjects)} subjects, {int((series['status'] == 'ok').sum())} series indexed; "
        f"{len(inc)} subjects included, {len(lost)} without a usable series.\n"
        f"Rejected series: {', '.join(parts) if parts else 'none'}.\n"
    )
    if (flagged != "").any():
        text += f"Included series corrected on conversion: {int((flagged != '').sum())} (gantry tilt / uneven spacing).\n"
    if lost:
        text += "Subjects left out: " + ", ".join(f"{s} ({subj_reason[s]})" for s in lost) + ".\n"
    return table, text


def load_hook(spec: str | None) -> Callable[[pd.DataFrame], pd.DataFrame] | None:
    """``path/to/file.py:function`` -> a function taking and returning the series table."""
    if not spec:
        return None
    import importlib.util

    path, _, func = spec.partition(":")
    mod_spec = importlib.util.spec_from_file_location("cohortseg_select_hook", path)
    if mod_spec is None or mod_spec.loader is None:
        raise RuleError(f"cannot load selection hook {path}")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return getattr(mod, func or "select_hook")


def with_raw_descriptors(series: pd.DataFrame, descriptors_json: str | Path | None) -> pd.DataFrame:
    """The series table with its free-text columns as the headers had them (from private_dir), so the
    rules see the raw text; only in memory."""
    if descriptors_json is None or not Path(descriptors_json).exists():
        return series
    import json

    return apply_raw_descriptors(series, json.loads(Path(descriptors_json).read_text()))


def apply_raw_descriptors(series: pd.DataFrame, raw: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """The series table with the free-text columns of ``raw`` (series id -> descriptors, as the index keeps
    them privately), in memory only."""
    out = series.copy()
    for col in SERIES_DESCRIPTORS:
        if col in out:
            out[col] = [raw.get(s, {}).get(col, v) for s, v in zip(out["series"], out[col])]
    return out


def with_public_descriptors(table: pd.DataFrame, public: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows of the series table) with the free-text columns of ``public`` (what results/ may hold)."""
    if table.empty:
        return table
    shown = public.drop_duplicates("series").set_index("series")
    shown[[c for c in SERIES_DESCRIPTORS if c in shown]] = shown[[c for c in SERIES_DESCRIPTORS if c in shown]].fillna("")
    out = table.copy()
    for col in SERIES_DESCRIPTORS:
        if col in out and col in shown:
            out[col] = [shown[col].get(s, "") for s in out["series"]]
    return out


QUERY_REASONS = {"not_retrieved": "not_retrieved", "failed": "retrieval_failed"}


def query_exclusions(retrieved_tsv: str | Path | None) -> pd.DataFrame:
    """The series a PACS query left out or failed to retrieve (``results/cohort/retrieved.tsv``), as rows of
    the audit: subject, study, series, reason, ``detail`` (the query key or the error; no free text of the
    headers), ranked after every indexed series when a subject's closest candidate is chosen."""
    columns = ["subject", "study", "series", "reason", "detail", "modality", "n_files", "n_failed_rules"]
    if retrieved_tsv is None:
        return pd.DataFrame(columns=columns)
    rows = [{"subject": r["subject"], "study": r["study"], "series": r["series"], "reason": QUERY_REASONS[r["status"]],
             "detail": r["reason"], "modality": r["modality"], "n_files": r["n_instances"], "n_failed_rules": 99}
            for r in read_rows(retrieved_tsv) if r["status"] in QUERY_REASONS]
    return pd.DataFrame(rows, columns=columns)


def with_query_exclusions(series: pd.DataFrame, excluded: pd.DataFrame,
                          retrieved_tsv: str | Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The audit's excluded series with those the PACS query left out, and the series table the summary
    counts subjects from (a subject whose every series stayed in the PACS is counted too)."""
    query = query_exclusions(retrieved_tsv)
    if query.empty:
        return series, excluded
    counted = pd.concat([series, query[["subject", "study", "series"]].assign(status="not_retrieved")], ignore_index=True)
    return counted, pd.concat([excluded, query], ignore_index=True)


def run(config: Config, series_tsv: str | Path, subjects_tsv: str | Path, included_tsv: str | Path,
        excluded_tsv: str | Path, summary_tsv: str | Path, summary_txt: str | Path,
        descriptors_json: str | Path | None = None, retrieved_tsv: str | Path | None = None) -> pd.DataFrame:
    """Apply the rules (on the raw descriptors of ``descriptors_json``, in memory) and write the audit
    (with the public descriptors); with ``retrieved_tsv`` (a cohort from the PACS) the series its query left
    out or failed to retrieve are in the audit too."""
    public = read_tsv(series_tsv)
    series = with_raw_descriptors(public, descriptors_json)
    subjects = read_tsv(subjects_tsv)
    with_mask = set(subjects.loc[subjects["has_mask"].astype(str).str.lower() == "true", "subject"])
    if config.source == "nifti":
        # a NIfTI cohort: one image per case, left out only for the reason its index check gave
        from .nifti_cohort import REASONS, select as select_nifti

        included, excluded = select_nifti(series)
        table, text = summarise(series, included, excluded, list(REASONS))
    else:
        sel = config.select
        hook = load_hook(sel.hook)
        rules = effective_rules(sel)
        included, excluded = select(series, rules, list(sel.tie_break), with_mask, hook, sel.tilt_tolerance_deg)
        counted, excluded = with_query_exclusions(series, excluded, retrieved_tsv)
        table, text = summarise(counted, included, excluded, [r["reason"] for r in rules])
    included, excluded = with_public_descriptors(included, public), with_public_descriptors(excluded, public)
    if config.privacy.descriptors == "keep" and config.source != "nifti":
        text = KEEP_WARNING + "\n" + text
    if included.empty:
        write_tsv(excluded_tsv, excluded)
        write_text(summary_txt, text)
        raise SystemExit(
            f"empty cohort: no series of the {series['subject'].nunique()} subjects passed the selection rules "
            f"(see {excluded_tsv}). {text}"
        )
    write_tsv(included_tsv, included)
    write_tsv(excluded_tsv, excluded)
    write_tsv(summary_tsv, table)
    write_text(summary_txt, text)
    log.info("%s", text.strip())
    return included
