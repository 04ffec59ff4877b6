"""Free-text descriptors (series/study/protocol descriptions, contrast agent, body part, ...) cleaned of
identifiers before they reach any output, in the spirit of DICOM PS3.15 Annex E's *Clean Descriptors*
option (the Basic profile removes Series Description and Protocol Name outright).

Technologists do type a patient's name, id or a date into a series description. ``privacy.descriptors``:

- ``clean`` (default): each descriptor is stripped of the tokens that match *that patient's* identifiers
  (name components of the patient and the referring physician in any order and case, accents ignored or
  transliterated, parts of 4 or more letters also inside other words;
  PatientID, OtherPatientIDs, AccessionNumber; the institution's name and its distinctive words), of
  dates and times in common spellings (20190314, 2019-03-14, 14.03.2019, 14/03/19, 14 Mar 2019, March 14,
  2019, 10:15, 10.15.00, ...) and of runs of 6 or more digits; each removal leaves ``[x]``.
- ``drop``: every descriptor is emptied.
- ``keep``: verbatim (the cohort audit's summary then warns that free text reaches results/).

Selection rules see the raw text, in memory: the index writes the cleaned text to ``results/`` and the raw
descriptors to ``private_dir/descriptors.json`` (mode 600), where a reviewer can read them, and the select
stage merges them back before applying its rules.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

REMOVED = "[x]"
# identifying tags read from each series' header to clean its descriptors (never written anywhere)
IDENTIFYING_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber", "InstitutionName",
                    "ReferringPhysicianName", "PatientBirthDate", "StudyDate", "SeriesDate")
# free-text columns of the series table and free-text tags of a sidecar
SERIES_DESCRIPTORS = ("series_description", "image_type", "manufacturer")
SIDECAR_DESCRIPTORS = ("SeriesDescription", "ImageType", "ContrastBolusAgent", "BodyPartExamined", "Manufacturer",
                       "ManufacturerModelName", "ConvolutionKernel", "ScanningSequence", "SequenceVariant",
                       "MRAcquisitionType", "ProtocolName", "StudyDescription")
GENERIC_WORDS = {"hospital", "clinic", "clinics", "general", "university", "universitat", "medical", "center",
                 "centre", "institute", "radiology", "imaging", "department", "health", "saint", "the", "and",
                 "of", "for", "hopital", "klinikum", "klinik", "kliniken", "ospedale", "hospital's", "memorial"}
MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
DATE_PATTERNS = [
    r"\b\d{4}[-./]\d{1,2}[-./]\d{1,2}\b",            # 2019-03-14, 2019/3/14
    r"\b\d{1,2}[-./]\d{1,2}[-./]\d{2,4}\b",          # 14.03.2019, 03/14/19, 14-3-2019
    rf"\b\d{{1,2}}[ .-]?{MONTHS}[ .,-]*\d{{2,4}}\b",  # 14 Mar 2019, 14-March-19
    rf"\b{MONTHS}[ .-]*\d{{1,2}}(?:st|nd|rd|th)?[ ,.-]*\d{{2,4}}\b",  # March 14, 2019
    r"\b\d{1,2}[:.h]\d{2}(?:[:.]\d{2})?\b",           # 10:15, 10.15.00, 10h15
    r"\d{6,}",                                       # 20190314, 101500, ids: any run of 6+ digits
]
_DATES = re.compile("|".join(f"(?:{p})" for p in DATE_PATTERNS), re.I)


def fold(text: str) -> str:
    """Case- and accent-folded, one character per character (so positions map back to the original)."""
    out = []
    for ch in text:
        base = [c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)]
        out.append((base[0] if base else ch).lower())
    return "".join(out)


TRANSLITERATIONS = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "æ": "ae", "ø": "oe", "å": "aa"}


def _components(value: Any) -> list[str]:
    """Words of a person name (DICOM PN: family^given^middle^prefix^suffix, alphabetic=ideographic=...),
    each also in its transliterated spelling (Müller: muller and mueller)."""
    words = [w for w in re.split(r"[\^=\s,.'\-]+", str(value or "")) if len(w) >= 2]
    spelled = ["".join(TRANSLITERATIONS.get(c, c) for c in w.lower()) for w in words]
    return list(dict.fromkeys(words + spelled))


def identifiers(tags: Mapping[str, Any]) -> dict[str, list[str]]:
    """The tokens to remove from one patient's descriptors: 'words' (whole-word matches) and 'strings'
    (matched anywhere), both folded."""
    words: set[str] = set()
    strings: set[str] = set()
    for tag in ("PatientName", "ReferringPhysicianName"):
        for w in _components(tags.get(tag)):
            (strings if len(w) >= 4 else words).add(fold(w))  # name parts of 4+ letters also inside words
    for tag in ("PatientID", "OtherPatientIDs", "AccessionNumber"):
        for v in re.split(r"\\", str(tags.get(tag) or "")):
            if len(v.strip()) >= 3:
                strings.add(fold(v.strip()))
    institution = str(tags.get("InstitutionName") or "").strip()
    if institution:
        strings.add(fold(institution))
        words.update(fold(w) for w in re.split(r"\W+", institution) if len(w) >= 4 and fold(w) not in GENERIC_WORDS)
    for tag in ("PatientBirthDate", "StudyDate", "SeriesDate"):
        d = str(tags.get(tag) or "")
        if re.fullmatch(r"\d{8}", d):
            y, m, dd = d[:4], d[4:6], d[6:]
            strings.update({d, f"{y}-{m}-{dd}", f"{dd}.{m}.{y}", f"{dd}/{m}/{y}", f"{m}/{dd}/{y}", f"{dd}-{m}-{y}",
                            f"{y}/{m}/{dd}", f"{dd}.{m}.{y[2:]}", f"{dd}/{m}/{y[2:]}"})
    return {"words": sorted(words, key=len, reverse=True), "strings": sorted(strings, key=len, reverse=True)}


def _spans(folded: str, ids: Mapping[str, Iterable[str]]) -> list[tuple[int, int]]:
    spans = []
    for s in ids.get("strings", ()):
        spans += [(m.start(), m.end()) for m in re.finditer(re.escape(s), folded)]
    for w in ids.get("words", ()):
        spans += [(m.start(), m.end()) for m in re.finditer(rf"(?<![^\W_]){re.escape(w)}(?![^\W_])", folded)]
    spans += [(m.start(), m.end()) for m in _DATES.finditer(folded)]
    return spans


def clean(text: Any, ids: Mapping[str, Iterable[str]]) -> str:
    """``text`` without the patient's identifiers, dates, times and long digit runs (``[x]`` each)."""
    text = "" if text is None else str(text)
    if not text:
        return text
    out, pos = [], 0
    for start, end in sorted(_spans(fold(text), ids)):
        if end <= pos:  # inside a span already removed
            continue
        out += [text[pos:max(start, pos)], REMOVED]
        pos = end
    out.append(text[pos:])
    return re.sub(r"\s{2,}", " ", "".join(out)).strip()


def public(text: Any, ids: Mapping[str, Iterable[str]], mode: str) -> str:
    """The descriptor as it may reach results/ under ``privacy.descriptors`` = ``mode``."""
    if mode == "keep":
        return "" if text is None else str(text)
    if mode == "drop":
        return ""
    if mode == "clean":
        return clean(text, ids)
    raise ValueError(f"unknown privacy.descriptors {mode!r} (clean, drop or keep)")


KEEP_WARNING = ("WARNING: privacy.descriptors is 'keep': series descriptions and other free text are copied "
                "verbatim into results/ (tables, sidecars, report); they may carry names, ids or dates.")
