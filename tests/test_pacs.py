"""Back to a real PACS: Orthanc started here (tests/orthanc.py) takes the SEGs by STOW-RS; each study then holds
one SEG referencing the series the model read, of that study's patient; bad credentials, an unreachable PACS
and a missing URL are clear errors."""

import json
import time

import nibabel as nib
import pydicom
import pytest

from cohortseg import dicomseg, pacs, push
from cohortseg.config import validate
from tests import orthanc
from tests.test_dicomseg import LESION, targets  # noqa: F401 - the fixture


def settings(url, env="COHORTSEG_TEST_PACS", retries=1, timeout=5.0):
    cfg = validate({"pacs": {"url": url, "credentials_env": env, "push": bool(url), "timeout_s": timeout, "retries": retries}})
    return push.Config.from_config(cfg)


def test_pacs_requires_authentication(pacs_server):
    import requests

    assert requests.get(pacs_server.url + "/system", timeout=5).status_code == 401
    assert requests.get(pacs_server.dicomweb + "/studies", timeout=5).status_code == 401


def test_seg_pushed_to_each_study_of_its_series(pacs_server, targets, tmp_path, monkeypatch):  # noqa: F811
    """The source series go to Orthanc first (as the hospital's images), then the stage writes one SEG per
    subject in a private folder and push stores them: Orthanc holds one SEG per study, referencing the series
    the model read, with that study's patient; the pushed table names subjects only."""
    monkeypatch.setenv("COHORTSEG_TEST_PACS", f"{orthanc.USER}:{orthanc.PASSWORD}")
    cfg = settings(pacs_server.dicomweb)
    client = pacs.make_client(cfg.pacs)
    preds, included, series_files = {}, ["subject\tseries"], {}
    t0 = time.time()
    n_instances = 0
    for i, (files, _img, lab) in enumerate(targets.values()):
        subject, series = f"sub-{i}", f"ser-{i}"
        client.store_instances([pydicom.dcmread(f) for f in files])
        n_instances += len(files)
        nib.save(lab, str(tmp_path / f"{subject}.nii.gz"))
        preds[subject] = {"prediction": str(tmp_path / f"{subject}.nii.gz")}
        included.append(f"{subject}\t{series}")
        series_files[series] = files
    upload_s = time.time() - t0
    (tmp_path / "m.json").write_text(json.dumps({"shard": "all", "predictions": preds}))
    (tmp_path / "included.tsv").write_text("\n".join(included) + "\n")
    (tmp_path / "files.json").write_text(json.dumps(series_files))
    (tmp_path / "selection.json").write_text(json.dumps({"selected": {"candidate": "unet"}}))
    seg_cfg = dicomseg.Config.from_config({"study": "s", "labels": ["lesion"],
                                           "dicomseg": {"enabled": True, "segments": LESION}})
    dicomseg.run(seg_cfg, tmp_path / "m.json", tmp_path / "included.tsv", tmp_path / "files.json",
                 tmp_path / "selection.json", tmp_path / "private", tmp_path / "record.json")
    t0 = time.time()
    rows = push.run(cfg, [str(tmp_path / "record.json")], [str(tmp_path / "private")], tmp_path / "pushed.tsv")
    push_s = time.time() - t0
    assert [r["status"] for r in rows] == ["stored"] * len(targets)
    table = (tmp_path / "pushed.tsv").read_text()
    for files, _img, _lab in targets.values():
        src = pydicom.dcmread(files[0], stop_before_pixels=True)
        segs = client.search_for_series(study_instance_uid=src.StudyInstanceUID, search_filters={"Modality": "SEG"})
        assert len(segs) == 1, f"study of {src.SeriesDescription}: {len(segs)} SEGs"
        seg_series = pydicom.Dataset.from_json(segs[0])
        meta = client.retrieve_series_metadata(src.StudyInstanceUID, seg_series.SeriesInstanceUID)
        seg = pydicom.Dataset.from_json(meta[0])
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        assert (seg.PatientID, seg.PatientName) == (src.PatientID, src.PatientName)
        assert src.PatientID not in table and src.StudyInstanceUID not in table
    stats = pacs_server.get("/statistics")
    print(f"Orthanc: {stats['CountStudies']} studies, {stats['CountSeries']} series, {stats['CountInstances']} "
          f"instances; {n_instances} source instances uploaded in {upload_s:.2f} s, {len(rows)} SEGs pushed in "
          f"{push_s:.2f} s")
    assert stats["CountSeries"] == 2 * len(targets)


def test_wrong_credentials_are_named(pacs_server, targets, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COHORTSEG_TEST_PACS", f"{orthanc.USER}:wrong")
    files, _img, lab = targets[("axial", False)]
    nib.save(lab, str(tmp_path / "p.nii.gz"))
    dicomseg.write_subject_seg(tmp_path / "p.nii.gz", files, tmp_path / "sub-x.dcm", ("lesion",), {}, "m", "m")
    (tmp_path / "r.json").write_text(json.dumps({"subjects": {"sub-x": {"status": "ok"}}}))
    with pytest.raises(pacs.PacsError, match=r"refused the credentials \(HTTP 401\): check \$COHORTSEG_TEST_PACS"):
        push.run(settings(pacs_server.dicomweb), [str(tmp_path / "r.json")], [str(tmp_path)], tmp_path / "pushed.tsv")
    assert not (tmp_path / "pushed.tsv").exists()


def test_unreachable_pacs_fails_within_its_retries(targets, tmp_path):  # noqa: F811
    files, _img, lab = targets[("axial", False)]
    nib.save(lab, str(tmp_path / "p.nii.gz"))
    dicomseg.write_subject_seg(tmp_path / "p.nii.gz", files, tmp_path / "sub-x.dcm", ("lesion",), {}, "m", "m")
    (tmp_path / "r.json").write_text(json.dumps({"subjects": {"sub-x": {"status": "ok"}}}))
    url = f"http://127.0.0.1:{orthanc.free_port()}/dicom-web"  # nothing listens there
    t0 = time.time()
    with pytest.raises(pacs.PacsError, match="stored none of 1 SEGs .*ConnectionError after 2 attempts.*is it running"):
        push.run(settings(url, retries=1, timeout=2.0), [str(tmp_path / "r.json")], [str(tmp_path)],
                 tmp_path / "pushed.tsv")
    assert time.time() - t0 < 15
    assert not (tmp_path / "pushed.tsv").exists()


def test_no_url_and_malformed_credentials(monkeypatch, tmp_path):
    with pytest.raises(pacs.PacsError, match="pacs.url is empty"):
        pacs.make_client(settings("").pacs)
    monkeypatch.setenv("COHORTSEG_TEST_PACS", "no-colon")
    with pytest.raises(pacs.PacsError, match="must be 'user:password'"):
        pacs.credentials(settings("http://x").pacs)
    monkeypatch.delenv("COHORTSEG_TEST_PACS")
    (tmp_path / "cred").write_text("u:p\n")
    cfg = push.Config.from_config(validate({"pacs": {"url": "http://x", "credentials_env": "COHORTSEG_TEST_PACS",
                                                     "credentials_file": str(tmp_path / "cred")}}))
    assert pacs.credentials(cfg.pacs) == ("u", "p")
