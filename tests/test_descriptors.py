"""Free-text descriptors cleaned of identifiers (privacy.descriptors): names, ids and dates typed into
series descriptions never reach results/, while selection rules still see the raw text."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cohortseg.descriptors import REMOVED, clean, identifiers, public

PATIENT = {"PatientName": "Müller-Lüdenscheidt^Anna^Maria", "PatientID": "PAT-0042917", "OtherPatientIDs": "X77812\\KL9981",
           "AccessionNumber": "ACC5512093", "InstitutionName": "Klinikum Nordstadt", "ReferringPhysicianName": "Okafor^Ben",
           "PatientBirthDate": "19480312", "StudyDate": "20210705", "SeriesDate": "20210705"}
CASES = {
    # typed identifiers -> what must be gone
    "AX T1 +C anna mueller-luedenscheidt": ["anna", "mueller", "luedenscheidt"],
    "MULLER ANNA T1 MPRAGE": ["muller", "anna"],
    "T1_AnnaMüller_post": ["anna", "müller"],
    "SAG T1 pat-0042917": ["pat-0042917"],
    "T1 KL9981 acc5512093": ["kl9981", "acc5512093"],
    "t1 +c 05.07.2021 10:32": ["05.07.2021", "10:32"],
    "T1 2021-07-05": ["2021-07-05"],
    "T1 5 Jul 2021": ["jul"],
    "T1 July 5th, 2021": ["july"],
    "born 12/03/1948 T1": ["12/03/1948"],
    "T1 nordstadt": ["nordstadt"],
    "Dr Okafor T2": ["okafor"],
    "T1 98765432": ["98765432"],
}
BENIGN = ["AX T1 MPRAGE +C", "SAG T1 SPACE 1mm iso", "T2 FLAIR 3.5mm 1.5T", "COR T1 +C MPR", "3-PLANE LOC",
          "DWI b1000 ADC", "T1 VIBE fs 0.9x0.9x1.5", "AX T1 +C 5mm", "ep2d_diff_mddw_20"]


@pytest.mark.parametrize("text", list(CASES))
def test_typed_identifiers_are_removed(text: str) -> None:
    ids = identifiers(PATIENT)
    out = clean(text, ids)
    print(f"{text!r} -> {out!r}")
    assert REMOVED in out
    for token in CASES[text]:
        assert token not in out.lower(), (text, out)
    assert ("T1" in text) == ("T1" in out), "the sequence words stay"


@pytest.mark.parametrize("text", BENIGN)
def test_descriptions_without_identifiers_are_unchanged(text: str) -> None:
    assert clean(text, identifiers(PATIENT)) == text


def test_modes() -> None:
    ids = identifiers(PATIENT)
    assert public("T1 anna", ids, "keep") == "T1 anna"
    assert public("T1 anna", ids, "drop") == ""
    assert public("T1 anna", ids, "clean") == f"T1 {REMOVED}"
    with pytest.raises(ValueError):
        public("x", ids, "hash")


@pytest.mark.parametrize("mode", ["clean", "drop", "keep"])
def test_index_select_and_sidecar_follow_the_mode(mode: str, tmp_path: Path, tiny_cohort: Path) -> None:
    """The tiny cohort types each patient's name, id and study date into its target series' description:
    results/ holds them cleaned (or dropped, or verbatim under keep, with a warning), private_dir the raw
    ones, and selection, which matches 't1|mprage' and '+C' on the raw text, includes the same series."""
    from cohortseg import index, select
    from cohortseg.config import load
    from cohortseg.convert import convert_series

    cfg = load(Path(__file__).resolve().parents[1] / "tests" / "config" / "tiny.yaml",
               {"dicom_dir": str(tiny_cohort / "dicom"), "masks": {"dir": str(tiny_cohort / "masks")},
                "private_dir": str(tmp_path / "private"), "privacy": {"descriptors": mode}})
    out = index.Outputs.default(tmp_path / "results", tmp_path / "private")
    index.run(index.Config.from_config(cfg), out)
    c = tmp_path / "results" / "cohort"
    select.run(select.Config.from_config(cfg), out.series, out.subjects, c / "inc.tsv", c / "exc.tsv", c / "sum.tsv",
               c / "sum.txt", out.descriptors)
    raw = json.loads(Path(out.descriptors).read_text())
    inc = pd.read_csv(c / "inc.tsv", sep="\t", keep_default_na=False)
    typed = [s for s, d in raw.items() if "ZQXPHINAME" in d["series_description"]]
    assert typed and set(inc["series"]) & set(typed), "the series with typed identifiers are still selected"
    public_text = "\n".join(Path(p).read_text() for p in (out.series, c / "inc.tsv", c / "exc.tsv"))
    if mode == "keep":
        assert "ZQXPHINAME" in public_text and "WARNING: privacy.descriptors is 'keep'" in (c / "sum.txt").read_text()
    else:
        assert "ZQXPHI" not in public_text
        assert "WARNING" not in (c / "sum.txt").read_text()
    shown = inc.set_index("series").loc[sorted(set(inc["series"]) & set(typed))[0], "series_description"]
    print(mode, "raw:", raw[sorted(set(inc["series"]) & set(typed))[0]]["series_description"], "| public:", shown)
    assert shown == "" if mode == "drop" else shown.startswith(("AX T1 MPRAGE +C", "SAG T1 MPRAGE +C"))
    files = json.loads(Path(out.series_files).read_text())[sorted(set(inc["series"]) & set(typed))[0]]
    _, meta = convert_series(files, "dcm2niix", descriptors=mode)
    sidecar = json.dumps(meta)
    assert ("ZQXPHI" in sidecar) == (mode == "keep"), sidecar
