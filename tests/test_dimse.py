"""The PACS by DIMSE (``pacs.protocol: dimse``, cohortseg.dimse) against a real Orthanc whose DICOM service knows
cohortseg's AE title: C-FIND + C-MOVE retrieve the same series and the same instances, with the same retrieved.tsv
and the same converted NIfTI, as DICOMweb does from the same PACS; retrieval resumes; C-STORE stores; a wrong
called AE title, a move destination the PACS does not know (A801) and a PACS that does not answer are errors
that say what to fix."""

import time
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from cohortseg import pacs, push, retrieve
from cohortseg.config import validate
from tests import orthanc
from tests.conftest import skip_or_fail
from tests.test_retrieve import FILE_COLUMNS, dicom_files, index_of, volume_sha

AET = "COHORTSEG"


@pytest.fixture(scope="module")
def dimse_pacs(tmp_path_factory):
    """Orthanc listing cohortseg's AE title (C-MOVE destination on a free port), holding a 5-patient cohort."""
    from cohortseg.demo_cohort import generate

    why = orthanc.available()
    if why:
        skip_or_fail(why)
    store_port = orthanc.free_port()
    server = orthanc.start(tmp_path_factory.mktemp("orthanc_dimse"), extra={
        "DicomCheckCalledAet": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
        "MaximumStorageCacheSize": 0,  # every read from its storage folder (the damaged-instance test)
        "DicomModalities": {"cohortseg": [AET, "127.0.0.1", store_port]}})
    cohort = tmp_path_factory.mktemp("cohort5") / "c"
    generate(cohort, n_subjects=5, seed=5, phi_marker="ZQXPHI", size="tiny")
    client = pacs.make_client(settings(server, store_port, protocol="dicomweb").pacs)
    n = 0
    for f in dicom_files(cohort / "dicom"):
        client.store_instances([pydicom.dcmread(f)])
        n += 1
    yield server, store_port, n, cohort
    server.stop()


def settings(server: orthanc.Orthanc, store_port: int, protocol: str = "dimse", private: Path | None = None,
             called: str = "ORTHANCTEST", calling: str = AET, port: int | None = None, **more):
    import os

    os.environ["COHORTSEG_TEST_PACS"] = f"{orthanc.USER}:{orthanc.PASSWORD}"
    cfg = validate({"private_dir": str(private or "/nonexistent"), "pseudonym": {"prefix": "sub-"},
                    "pacs": {"protocol": protocol, "url": server.dicomweb, "credentials_env": "COHORTSEG_TEST_PACS",
                             "retries": 1, "timeout_s": 10,
                             "dimse": {"host": "127.0.0.1", "port": port or server.dicom_port, "called_aet": called,
                                       "calling_aet": calling, "store_port": store_port}, **more.pop("pacs", {})},
                    **more})
    return retrieve.Config.from_config(cfg)


def private_dir(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.mkdir(mode=0o700)
    (p / "key").write_text("5a" * 32 + "\n")
    (p / "key").chmod(0o600)
    return p


def test_dimse_retrieval_equals_dicomweb_retrieval(dimse_pacs, tmp_path):
    server, store_port, n_stored, _ = dimse_pacs
    a, b = private_dir(tmp_path, "dicomweb"), private_dir(tmp_path, "dimse")
    t0 = time.time()
    rows_web = retrieve.run(settings(server, store_port, "dicomweb", a), tmp_path / "web.tsv")
    t1 = time.time()
    rows_dimse = retrieve.run(settings(server, store_port, "dimse", b), tmp_path / "dimse.tsv")
    t2 = time.time()
    got = sum(r["n_retrieved"] for r in rows_dimse)
    print(f"{n_stored} instances in the PACS; DICOMweb retrieved {sum(r['n_retrieved'] for r in rows_web)} in "
          f"{t1 - t0:.2f} s, DIMSE (C-FIND + C-MOVE) {got} in {t2 - t1:.2f} s")
    assert got == n_stored and all(r["status"] == "retrieved" for r in rows_dimse)
    assert (tmp_path / "web.tsv").read_text() == (tmp_path / "dimse.tsv").read_text()
    # the same instances, the same index, the same converted volumes
    def uids(p):
        return sorted(f.name for f in retrieve.raw_dir(p).rglob("*.dcm"))
    assert uids(a) == uids(b) and len(uids(b)) == n_stored
    ia, pa = index_of(retrieve.raw_dir(a), a)
    ib, pb = index_of(retrieve.raw_dir(b), b)
    cols = [c for c in ia.columns if c not in FILE_COLUMNS]
    key = ["subject", "study", "series"]
    pd.testing.assert_frame_equal(ia.sort_values(key).reset_index(drop=True)[cols],
                                  ib.sort_values(key).reset_index(drop=True)[cols])
    ok = ia.loc[ia["status"] == "ok", "series"]
    same = [volume_sha(pa["series_files"][s]) == volume_sha(pb["series_files"][s]) for s in ok]
    print(f"{len(ok)} series indexed alike, {sum(same)} identical NIfTI checksums")
    assert len(ok) and all(same)
    # resumable: only a removed instance is moved again
    next(retrieve.raw_dir(b).rglob("*.dcm")).unlink()
    again = retrieve.run(settings(server, store_port, "dimse", b), tmp_path / "dimse.tsv")
    assert sum(r["n_retrieved"] for r in again) == 1 and sum(r["n_held"] for r in again) == n_stored - 1


def test_dimse_store(dimse_pacs, tmp_path):
    """C-STORE (push's call) stores an instance the PACS then holds, with its SOP class and transfer syntax."""
    import requests
    from pydicom.uid import generate_uid

    server, store_port, *_ = dimse_pacs
    cfg = settings(server, store_port)
    client = pacs.make_client(cfg.pacs)
    try:
        study, series = first_series(client)
        sop = retrieve._value(client.search_for_instances(study, series)[0], retrieve.SOP_UID)
        original = client.retrieve_instance(study, series, sop)
    finally:
        pacs.close_client(client)
    original.SOPInstanceUID = original.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "copy.dcm"
    original.save_as(path)
    attempts = push.store(pacs.make_client(cfg.pacs), path, cfg.pacs)
    held = requests.post(f"{server.url}/tools/lookup", data=str(original.SOPInstanceUID),
                         auth=(orthanc.USER, orthanc.PASSWORD), timeout=10).json()
    assert attempts == 1 and len(held) == 1 and held[0]["Type"] == "Instance"


def first_series(client) -> tuple[str, str]:
    st = client.search_for_studies()[0]
    study = retrieve._value(st, retrieve.STUDY_UID)
    se = client.search_for_series(study)[0]
    return study, retrieve._value(se, retrieve.SERIES_UID)


def test_dimse_errors_say_what_to_fix(dimse_pacs, tmp_path):
    server, store_port, *_ = dimse_pacs
    with pytest.raises(pacs.AuthError, match="rejected the association from AE title 'COHORTSEG'.*called_aet"):
        retrieve.run(settings(server, store_port, private=tmp_path / "a", called="NOTTHEPACS"), tmp_path / "a.tsv")
    # Orthanc answers an unknown move destination with C000 (the standard's A801 is caught by name)
    with pytest.raises(pacs.AuthError, match=r"refused to move the first instance to 'STRANGER' \(C-MOVE status 0xC000"):
        retrieve.run(settings(server, store_port, private=tmp_path / "b", calling="STRANGER"), tmp_path / "b.tsv")
    t0 = time.time()
    with pytest.raises(pacs.Unavailable, match="no association with the PACS"):
        retrieve.run(settings(server, store_port, private=tmp_path / "c", port=orthanc.free_port()), tmp_path / "c.tsv")
    print(f"unreachable PACS: error after {time.time() - t0:.1f} s (1 retry)")
    assert not any((tmp_path / f"{x}.tsv").exists() for x in "abc")


def test_dimse_configuration_is_checked():
    """source: pacs (or pacs.push) by DIMSE needs the PACS's host and AE title; AE titles are at most 16
    characters without a backslash; the client refuses to start without a host."""
    from cohortseg.config import ConfigError

    validate({"source": "pacs", "pacs": {"protocol": "dimse", "dimse": {"host": "pacs", "called_aet": "PACS"}}})
    with pytest.raises(ConfigError, match="source: pacs with pacs.protocol: dimse needs pacs.dimse.host and "
                                          "pacs.dimse.called_aet"):
        validate({"source": "pacs", "pacs": {"protocol": "dimse", "dimse": {"host": "pacs"}}})
    with pytest.raises(ConfigError, match="pacs.push needs pacs.url"):
        validate({"pacs": {"push": True}})
    for bad in ("A" * 17, "BACK\\SLASH"):
        with pytest.raises(ConfigError, match="does not match"):
            validate({"pacs": {"dimse": {"calling_aet": bad}}})
    with pytest.raises(pacs.PacsError, match="pacs.dimse.host and pacs.dimse.called_aet must name the PACS"):
        pacs.make_client(retrieve.Config.from_config(validate({"pacs": {"protocol": "dimse"}})).pacs)


def test_masks_stored_in_the_pacs_are_retrieved_and_found(dimse_pacs, tmp_path):
    """masks.in_cohort with source: pacs: an RTSTRUCT stored in the PACS beside its image is retrieved although the
    query keys ask for MR only (without in_cohort it is left there, with the modality key as its reason), and the
    index makes it the candidate mask of its patient's subject."""
    from cohortseg.index import build_index, cohort_masks
    from cohortseg.pseudonym import from_settings
    from tests.test_rtstruct import frames_and_circles, stored_beside, write_rtstruct

    server, store_port, _, cohort = dimse_pacs
    by_series: dict[str, list[str]] = {}
    for f in dicom_files(cohort / "dicom"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if ds.Modality == "MR" and "ImageOrientationPatient" in ds:
            by_series.setdefault(str(ds.SeriesInstanceUID), []).append(str(f))
    files = max(by_series.values(), key=len)
    source, contours, *_ = frames_and_circles(files, (6.0,))
    path = write_rtstruct(tmp_path / "rt.dcm", source, {"lesion": contours})
    stored_beside(path, source[0], 901)
    rt = pydicom.dcmread(path)
    pacs.make_client(settings(server, store_port, "dicomweb").pacs).store_instances([rt])
    query = {"pacs": {"query": {"modalities": ["MR"]}}}
    for in_cohort in (False, True):
        private = private_dir(tmp_path, f"p{in_cohort}")
        cfg = settings(server, store_port, "dimse", private, masks={"in_cohort": in_cohort}, **query)
        rows = retrieve.run(cfg, tmp_path / f"r{in_cohort}.tsv")
        mine = [r for r in rows if r["modality"] == "RTSTRUCT"]
        print(in_cohort, mine)
        assert len(mine) == 1
        if not in_cohort:
            assert mine[0]["status"] == "not_retrieved" and mine[0]["reason"].startswith("modality not in")
    assert mine[0]["status"] == "retrieved" and mine[0]["n_retrieved"] == 1
    pseudo = from_settings(private, cfg.pseudonym)
    df, maps = build_index(retrieve.raw_dir(private), pseudo, "post[ _-]?op", 0.2, workers=1)
    found = cohort_masks(df, maps["series_files"])
    subject = pseudo.subject(str(rt.PatientID))
    assert list(found) == [subject] and len(found[subject]) == 1 and found[subject][0].endswith(f"{rt.SOPInstanceUID}.dcm")


def test_a_corrupt_instance_in_the_pacs_fails_its_series_alone(dimse_pacs, tmp_path):
    """One instance damaged in the PACS's own storage (truncated on disk, as a failing disk leaves it; Orthanc
    refuses to store a truncated file, so the test truncates its stored copy). By DIMSE Orthanc cannot send it;
    by DICOMweb it serves the file as stored and pydicom reads what there is, so retrieve checks the pixel data's
    length. Either way that series fails with its reason, every other series is retrieved, and nothing of the
    damaged instance is left in the raw folder."""
    import requests

    server, store_port, *_ = dimse_pacs
    auth = (orthanc.USER, orthanc.PASSWORD)
    series = [s for s in requests.get(f"{server.url}/series", auth=auth, timeout=10).json()]
    victim_series = next(s for s in series if len(requests.get(f"{server.url}/series/{s}", auth=auth,
                                                                  timeout=10).json()["Instances"]) > 3)
    info = requests.get(f"{server.url}/series/{victim_series}", auth=auth, timeout=10).json()
    instance = info["Instances"][1]
    uuid = requests.get(f"{server.url}/instances/{instance}/attachments/dicom/info", auth=auth, timeout=10).json()["Uuid"]
    stored = server.folder / "db" / uuid[:2] / uuid[2:4] / uuid
    original = stored.read_bytes()
    series_uid = info["MainDicomTags"]["SeriesInstanceUID"]
    sop_uid = requests.get(f"{server.url}/instances/{instance}", auth=auth, timeout=10).json()["MainDicomTags"]["SOPInstanceUID"]
    stored.write_bytes(original[: len(original) // 2])
    try:
        for protocol in ("dicomweb", "dimse"):
            private = private_dir(tmp_path, protocol)
            cfg = settings(server, store_port, protocol, private)
            rows = retrieve.run(cfg, tmp_path / f"{protocol}.tsv")
            pseudo_series = from_settings_of(private, cfg).series(series_uid)
            failed = [r for r in rows if r["status"] == "failed"]
            print(protocol, [(r["series"], r["reason"]) for r in failed])
            held = list(retrieve.raw_dir(private).rglob(f"{sop_uid}*"))
            print(protocol, "held:", [h.name for h in held])
            assert [r["series"] for r in failed] == [pseudo_series] and not held
            assert failed[0]["reason"].startswith("retrieval failed: ")
            assert sum(r["status"] == "retrieved" for r in rows) == len(rows) - 1
    finally:
        stored.write_bytes(original)


def from_settings_of(private: Path, cfg):
    from cohortseg.pseudonym import from_settings

    return from_settings(private, cfg.pseudonym)


def test_move_statuses_are_read_as_the_standard_defines_them(monkeypatch):
    """The C-MOVE statuses a PACS other than Orthanc answers: A801 (destination unknown) stops the stage by name;
    B000 (some sub-operations failed) leaves the missing instances to the caller; a failure after a first
    successful move is retried (Unavailable), not taken for the configuration."""
    from pydicom import Dataset

    from cohortseg.dimse import DimseClient

    cfg = validate({"pacs": {"protocol": "dimse", "dimse": {"host": "pacs.example", "called_aet": "PACS"}}})
    client = DimseClient(retrieve.Config.from_config(cfg).pacs)

    def answering(*codes: int, completed: int = 0):
        class Assoc:
            def send_c_move(self, *args):
                for code in codes:
                    status = Dataset()
                    status.Status, status.NumberOfCompletedSuboperations = code, completed
                    yield status, None

            def release(self):
                pass
        monkeypatch.setattr(client, "_associate", lambda ae=None: Assoc())

    answering(0xA801)
    with pytest.raises(pacs.AuthError, match=r"does not know the move destination 'COHORTSEG' \(C-MOVE status "
                                             r"0xA801\): register that AE title .* port 11112"):
        client._move(Dataset())
    answering(0xFF00, 0xB000, completed=3)
    client._move(Dataset())  # partial: the caller counts what arrived
    assert client.moved
    answering(0xC000)
    with pytest.raises(pacs.Unavailable, match=r"could not move the instances \(C-MOVE status 0xC000\)"):
        client._move(Dataset())
