"""The cohort from a real PACS (Orthanc started here): a 20-patient synthetic cohort uploaded by STOW-RS and
pulled back by `retrieve` gives the same index, the same selection audit and the same converted NIfTI
(checksums) as the same cohort read from its files; retrieval resumes, the query keys leave series out with
their reason, and a series deleted during the retrieval fails alone."""

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from cohortseg import pacs, retrieve
from cohortseg import select as select_stage
from cohortseg.config import load, validate
from cohortseg.convert import convert_series
from cohortseg.index import build_index
from cohortseg.pseudonym import from_settings
from tests import orthanc

REPO = Path(__file__).resolve().parents[1]
# columns that describe where the files lie, not what they hold
FILE_COLUMNS = {"n_files"}


@pytest.fixture(scope="module")
def cohort20(tmp_path_factory):
    from cohortseg.demo_cohort import generate

    out = tmp_path_factory.mktemp("cohort20") / "c"
    generate(out, n_subjects=20, seed=11, phi_marker="ZQXPHI", size="tiny")
    return out


def dicom_files(folder: Path) -> list[Path]:
    """The files of the export that are DICOM instances (the bad inputs of the cohort are not uploadable)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM, truncated: not something a PACS holds
                continue
            if "SOPInstanceUID" in ds and ds.SOPInstanceUID and ds.get("SeriesInstanceUID") and ds.get("StudyInstanceUID"):
                out.append(p)
    return out


@pytest.fixture(scope="module")
def uploaded(pacs_server, cohort20, tmp_path_factory):
    """The cohort's DICOM instances stored in Orthanc; the copy of them on disk the comparison reads."""
    import shutil

    os_env = {"COHORTSEG_TEST_PACS": f"{orthanc.USER}:{orthanc.PASSWORD}"}
    files = dicom_files(cohort20 / "dicom")
    local = tmp_path_factory.mktemp("export")
    client = pacs.make_client(config(pacs_server.dicomweb, local, os_env).pacs)
    t0 = time.time()
    stored = []
    for f in files:
        try:
            client.store_instances([pydicom.dcmread(f)])
        except Exception:  # noqa: BLE001 - what the PACS refuses is not in the comparison
            continue
        target = local / f.relative_to(cohort20 / "dicom")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)
        stored.append(f)
    print(f"uploaded {len(stored)} of {len(files)} instances in {time.time() - t0:.2f} s")
    assert len(stored) > 0.9 * len(files)
    return local, len(stored)


def config(url: str, private: Path, env: dict[str, str] | None = None, **query):
    import os

    os.environ.update(env or {"COHORTSEG_TEST_PACS": f"{orthanc.USER}:{orthanc.PASSWORD}"})
    cfg = validate({"private_dir": str(private), "pseudonym": {"prefix": "sub-"},
                    "pacs": {"url": url, "credentials_env": "COHORTSEG_TEST_PACS", "retries": 1, "timeout_s": 10,
                             "query": query}})
    return retrieve.Config.from_config(cfg)


def index_of(folder: Path, private: Path) -> tuple[pd.DataFrame, dict]:
    pseudo = from_settings(private, retrieve.Config.from_config(validate({"private_dir": str(private)})).pseudonym)
    return build_index(folder, pseudo, "post[ _-]?op", 0.2, workers=1)


def audit(series: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = select_stage.Config.from_config(load(REPO / "tests" / "config" / "tiny.yaml"))
    rules = select_stage.effective_rules(cfg.select)
    return select_stage.select(series, rules, list(cfg.select.tie_break), None, None, cfg.select.tilt_tolerance_deg)


def volume_sha(files: list[str]) -> str:
    img, _ = convert_series(files, "dcm2niix")
    return hashlib.sha256(np.ascontiguousarray(np.asanyarray(img.dataobj)).tobytes()
                          + np.round(img.affine, 6).tobytes()).hexdigest()


def test_pacs_cohort_equals_the_file_cohort(pacs_server, uploaded, tmp_path):
    local, n_uploaded = uploaded
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "key").write_text("5a" * 32 + "\n")
    (private / "key").chmod(0o600)
    t0 = time.time()
    rows = retrieve.run(config(pacs_server.dicomweb, private), tmp_path / "retrieved.tsv")
    seconds = time.time() - t0
    got = sum(r["n_retrieved"] for r in rows)
    print(f"retrieved {sum(r['status'] == 'retrieved' for r in rows)} series of "
          f"{len({r['study'] for r in rows})} studies, {got} instances in {seconds:.2f} s")
    assert got == n_uploaded and all(r["status"] == "retrieved" for r in rows)
    # the same index and the same audit, under the same pseudonyms
    a, pa = index_of(local, private)
    b, pb = index_of(retrieve.raw_dir(private), private)
    cols = [c for c in a.columns if c not in FILE_COLUMNS]
    key = ["subject", "study", "series"]
    a_ok = a[a["status"] == "ok"].sort_values(key).reset_index(drop=True)[cols]
    b_ok = b[b["status"] == "ok"].sort_values(key).reset_index(drop=True)[cols]
    pd.testing.assert_frame_equal(a_ok, b_ok)
    inc_a, exc_a = audit(a_ok.assign(n_files=a[a["status"] == "ok"].sort_values(key)["n_files"].to_numpy()))
    inc_b, exc_b = audit(b_ok.assign(n_files=b[b["status"] == "ok"].sort_values(key)["n_files"].to_numpy()))
    assert list(zip(inc_a["subject"], inc_a["series"])) == list(zip(inc_b["subject"], inc_b["series"]))
    assert sorted(zip(exc_a["series"], exc_a["reason"])) == sorted(zip(exc_b["series"], exc_b["reason"]))
    # the same converted NIfTI (voxels and affine) of every included series
    same = [volume_sha(pa["series_files"][s]) == volume_sha(pb["series_files"][s]) for s in inc_a["series"]]
    print(f"{len(inc_a)} subjects included from both; {sum(same)} identical NIfTI checksums; "
          f"{len(exc_a)} excluded series, same reasons")
    assert all(same) and len(inc_a) >= 15
    # the table names pseudonyms only
    text = (tmp_path / "retrieved.tsv").read_text()
    assert "ZQXPHI" not in text and "1.2." not in text.replace("\t1.2", "")
    # resumable: what is held is not asked for again; a removed instance is
    victim = next(retrieve.raw_dir(private).rglob("*.dcm"))
    victim.unlink()
    again = retrieve.run(config(pacs_server.dicomweb, private), tmp_path / "retrieved.tsv")
    assert sum(r["n_retrieved"] for r in again) == 1 and sum(r["n_held"] for r in again) == n_uploaded - 1


def test_query_keys_leave_series_out_with_their_reason(pacs_server, uploaded, tmp_path):
    rows = retrieve.run(config(pacs_server.dicomweb, tmp_path / "p", modalities=["MR"], min_instances=30,
                               series_description="T1"), tmp_path / "r.tsv")
    reasons = {r["reason"] for r in rows if r["status"] == "not_retrieved"}
    assert any(r.startswith("modality not in") for r in reasons) or all(r["modality"] == "MR" for r in rows)
    assert "series description does not match pacs.query.series_description" in reasons
    assert any("fewer than pacs.query.min_instances 30" in r for r in reasons)
    kept = [r for r in rows if r["status"] == "retrieved"]
    assert kept and all(r["n_instances"] >= 30 for r in kept)
    held = {p.parent.name for p in retrieve.raw_dir(tmp_path / "p").rglob("*.dcm")}
    assert held == {r["series"] for r in kept}, "only the kept series were retrieved"


def test_patients_file_limits_the_query(pacs_server, uploaded, cohort20, tmp_path):
    ids = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).PatientID) for f in dicom_files(cohort20 / "dicom")})
    (tmp_path / "ids.txt").write_text("# two patients\n" + "\n".join(ids[:2]) + "\n")
    cfg = config(pacs_server.dicomweb, tmp_path / "p", patients_file=str(tmp_path / "ids.txt"), min_instances=1)
    rows = retrieve.run(cfg, tmp_path / "r.tsv")
    pseudo = from_settings(tmp_path / "p", cfg.pseudonym)
    assert {r["subject"] for r in rows} == {pseudo.subject(i) for i in ids[:2]}


def test_series_deleted_during_retrieval_fails_alone(pacs_server, uploaded, tmp_path, monkeypatch):
    """A series the PACS lists but deletes before its instances are fetched: that series fails with its reason,
    every other series is retrieved."""
    import requests

    cfg = config(pacs_server.dicomweb, tmp_path / "p", series_description="LOC|FLAIR")
    original = retrieve.plan
    doomed = {}

    def plan_then_delete(client, config_, pseudo):
        keep, rows = original(client, config_, pseudo)
        st, se = keep[0]
        uid = retrieve._value(se, retrieve.SERIES_UID)
        found = requests.post(f"{pacs_server.url}/tools/lookup", data=uid, auth=(orthanc.USER, orthanc.PASSWORD),
                              timeout=10).json()
        requests.delete(f"{pacs_server.url}{found[0]['Path']}", auth=(orthanc.USER, orthanc.PASSWORD), timeout=10)
        doomed["series"] = pseudo.series(uid)
        return keep, rows

    monkeypatch.setattr(retrieve, "plan", plan_then_delete)
    rows = retrieve.run(cfg, tmp_path / "r.tsv")
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["series"] for r in failed] == [doomed["series"]]
    assert failed[0]["reason"].startswith("retrieval failed: PacsError")
    assert sum(r["status"] == "retrieved" for r in rows) >= 1


def test_wrong_credentials_stop_the_retrieval(pacs_server, tmp_path):
    cfg = config(pacs_server.dicomweb, tmp_path / "p", {"COHORTSEG_TEST_PACS": f"{orthanc.USER}:wrong"})
    with pytest.raises(pacs.AuthError, match="refused the credentials"):
        retrieve.run(cfg, tmp_path / "r.tsv")
    assert not (tmp_path / "r.tsv").exists()


def test_series_left_in_the_pacs_join_the_selection_audit(pacs_server, uploaded, tmp_path):
    """The query keys' decisions are in excluded.tsv and the exclusion summary beside the tag rules' (reason
    not_retrieved, the key in `detail`), so the audit accounts for every series the PACS offered."""
    from cohortseg.util import write_tsv

    private = tmp_path / "p"
    rows = retrieve.run(config(pacs_server.dicomweb, private, series_description="T1|FLAIR"), tmp_path / "r.tsv")
    left = sorted((r["series"], r["reason"]) for r in rows if r["status"] == "not_retrieved")
    assert left
    series, _ = index_of(retrieve.raw_dir(private), private)
    write_tsv(tmp_path / "series.tsv", series)
    write_tsv(tmp_path / "subjects.tsv", pd.DataFrame({"subject": sorted(series["subject"].unique()), "has_mask": False}))
    cfg = select_stage.Config.from_config(load(REPO / "tests" / "config" / "tiny.yaml",
                                               {"source": "pacs", "pacs": {"url": pacs_server.dicomweb}}))
    out = {n: tmp_path / f"{n}.tsv" for n in ("included", "excluded", "summary")}
    select_stage.run(cfg, tmp_path / "series.tsv", tmp_path / "subjects.tsv", out["included"], out["excluded"],
                     out["summary"], tmp_path / "summary.txt", None, tmp_path / "r.tsv")
    excluded = pd.read_csv(out["excluded"], sep="\t")
    query = excluded[excluded["reason"] == "not_retrieved"]
    assert sorted(zip(query["series"], query["detail"])) == left
    summary = pd.read_csv(out["summary"], sep="\t")
    assert int(summary.loc[summary["reason"] == "not_retrieved", "count"].iloc[0]) == len(left)
    text = (tmp_path / "summary.txt").read_text()
    print(text)
    assert f"{len(left)} left in the PACS by the query keys" in text
    indexed = set(series.loc[series["status"] == "ok", "series"])
    assert set(excluded["series"]) | set(pd.read_csv(out["included"], sep="\t")["series"]) == indexed | {s for s, _ in left}
