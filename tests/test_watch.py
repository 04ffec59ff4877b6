"""Watch mode against a real Orthanc: three studies uploaded (one without a usable series), the watcher stores
two SEGs back, each in its study and referencing the series the selection chose, records the third as
rejected with its reason; restarted, it redoes nothing; SIGTERM stops it cleanly; a changed package is refused
before anything is processed; no identifier reaches the run log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import torch
import yaml

from cohortseg.config import load
from cohortseg.index import build_index
from cohortseg.pseudonym import Pseudonymiser
from cohortseg.select import effective_rules, select
from tests import orthanc
from tests.conftest import REPO, skip_or_fail

CFG = REPO / "tests" / "config" / "tiny.yaml"


@pytest.fixture()
def pacs(tmp_path):
    why = orthanc.available()
    if why:
        skip_or_fail(why)
    server = orthanc.start(tmp_path / "orthanc")
    yield server
    server.stop()


def three_studies(tiny_cohort: Path) -> tuple[list[list[str]], list[str]]:
    """Files of two studies whose series pass the tiny config's rules and of one whose series all fail
    (its reasons), chosen by the workflow's own index and rules."""
    cfg = load(CFG)
    df, private = build_index(tiny_cohort / "dicom", Pseudonymiser(b"w" * 32), cfg["index"]["postop_regex"], 0.2)
    included, excluded = select(df, effective_rules(cfg["select"]), list(cfg["select"]["tie_break"]))
    ok_studies = list(dict.fromkeys(included["study"]))[:2]
    all_failed = [s for s in dict.fromkeys(excluded["study"]) if s not in set(included["study"])]
    bad = all_failed[0]
    reasons = sorted(set(excluded.loc[excluded["study"] == bad, "reason"]))
    studies = []
    for study in ok_studies + [bad]:
        series = df.loc[df["study"] == study, "series"]
        studies.append([f for s in series for f in private["series_files"].get(s, [])])
    return studies, reasons


def make_package(tmp_path: Path) -> Path:
    """A package of one 2-fold U-Net whose output bias makes it segment every voxel (the weights are not the
    point here: the loop is)."""
    from cohortseg.ensemble import build_ensemble
    from cohortseg.model import build_model, save_model
    from cohortseg.package import Config, build
    from cohortseg.settings import TrainSettings

    cfg = load(CFG, {"train": {"base_filters": 4}, "preprocess": {"size": [16, 16, 16], "normalisation": "zscore"}})
    train = {**cfg["train"], "model": "unet"}
    paths = []
    for k in range(2):
        torch.manual_seed(k)
        net = build_model(TrainSettings.from_dict(train), 1, [16, 16, 16])
        last_bias = [p for name, p in net.named_parameters() if name.endswith("bias") and p.numel() == 1][-1]
        with torch.no_grad():
            last_bias.fill_(20.0)
        p = tmp_path / "models" / f"fold{k}" / "model.pt"
        p.parent.mkdir(parents=True)
        meta = {"fold": k, "labels": ["lesion"], "size": [16, 16, 16], "train": train, "preprocess": cfg["preprocess"],
                "best_epoch": 1, "best_val_dice": 0.5, "input_padding": "image_minimum"}
        save_model(p, net, meta)
        (p.parent / "train.json").write_text(json.dumps(meta))
        paths.append(str(p))
    build_ensemble(paths, 2, tmp_path / "models" / "ensemble.json", "unet")
    sel = {"selected": {"candidate": "unet", "models": ["unet"], "ensemble": False, "mean_dice": 0.5},
           "postprocessing": {"foreground_lcc": False, "label_lcc": []}, "cv_dice_with_postprocessing": {"lesion": 0.5}}
    (tmp_path / "selection.json").write_text(json.dumps(sel))
    (tmp_path / "plans.json").write_text("{}")
    (tmp_path / "comparison.tsv").write_text("model\tset\tlabel\tmetric\tn\tmean\tsd\tmedian\tci_low\tci_high\n")
    (tmp_path / "included.tsv").write_text("subject\tmodality\nsub-a\tMR\nsub-b\tMR\n")
    (tmp_path / "splits.json").write_text(json.dumps({"n_folds": 2, "test": [], "folds": [
        {"train": ["sub-a"], "val": ["sub-b"]}, {"train": ["sub-b"], "val": ["sub-a"]}]}))
    return build(Config.from_config(cfg), tmp_path / "selection.json", [str(tmp_path / "models" / "ensemble.json")],
                 tmp_path / "plans.json", tmp_path / "comparison.tsv", tmp_path / "included.tsv",
                 tmp_path / "splits.json", tmp_path / "model" / "tiny-v1.0.0")


def watch_config(tmp_path: Path, url: str) -> dict:
    return load(CFG, {"private_dir": str(tmp_path / "private"), "watch": {"poll_s": 0.2, "stable_s": 0},
                      "pacs": {"url": url, "credentials_env": "COHORTSEG_TEST_PACS", "retries": 1}})


def segs_in(server) -> list[pydicom.Dataset]:
    import requests

    out = []
    for iid in server.get("/instances"):
        ds = pydicom.dcmread(__import__("io").BytesIO(requests.get(
            f"{server.url}/instances/{iid}/file", auth=(orthanc.USER, orthanc.PASSWORD), timeout=10).content))
        if ds.Modality == "SEG":
            out.append(ds)
    return out


def test_watch_segments_new_studies_once(pacs, tiny_cohort, tmp_path, monkeypatch):
    from cohortseg import watch
    from cohortseg.pacs import make_client
    from cohortseg.settings import PacsSettings

    monkeypatch.setenv("COHORTSEG_TEST_PACS", f"{orthanc.USER}:{orthanc.PASSWORD}")
    studies, reasons = three_studies(tiny_cohort)
    cfg = watch_config(tmp_path, pacs.dicomweb)
    client = make_client(PacsSettings.from_dict(cfg["pacs"]))
    t0 = time.time()
    for files in studies:
        client.store_instances([pydicom.dcmread(f) for f in files])
    upload_s = time.time() - t0
    package = make_package(tmp_path)
    table = tmp_path / "results" / "watch" / "studies.tsv"

    t0 = time.time()
    rows = watch.run(watch.Config.from_config(cfg), package, table, max_polls=1)
    first_s = time.time() - t0
    statuses = sorted(r["status"] for r in rows)
    print(f"uploaded {sum(map(len, studies))} instances of 3 studies in {upload_s:.2f} s; first poll {first_s:.2f} s:")
    print(table.read_text())
    assert statuses == ["done", "done", "rejected"], rows
    rejected = next(r for r in rows if r["status"] == "rejected")
    assert rejected["reason"].startswith("no series passed the selection rules") and all(x in rejected["reason"] for x in reasons)

    segs = segs_in(pacs)
    assert len(segs) == 2
    by_study = {}
    for files in studies[:2]:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        by_study[str(first.StudyInstanceUID)] = (str(first.PatientID), {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files})
    for seg in segs:
        patient, series = by_study[str(seg.StudyInstanceUID)]
        assert str(seg.PatientID) == patient
        assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) in series
    assert len({str(s.StudyInstanceUID) for s in segs}) == 2

    # restarted: nothing redone
    rows = watch.run(watch.Config.from_config(cfg), package, table, max_polls=1)
    assert len(rows) == 3 and len(segs_in(pacs)) == 2
    text = table.read_text()
    assert "ZQXPHI" not in text and all(str(p) not in text for p, _ in by_study.values())

    # SIGTERM stops a watcher between polls, with exit status 0, nothing redone
    cfg_file = tmp_path / "watch.yaml"
    cfg_file.write_text(yaml.safe_dump({**yaml.safe_load(CFG.read_text()), "private_dir": cfg["private_dir"],
                                        "watch": {"poll_s": 30, "stable_s": 0}, "pacs": cfg["pacs"]}))
    log = tmp_path / "watch.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cohortseg.cli", "watch", "--model", str(package), "--table",
                                 str(table), "-c", str(cfg_file)], cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and "poll 1:" not in log.read_text():
        time.sleep(0.2)
    assert "poll 1: 0 studies processed, 3 recorded in all" in log.read_text(), log.read_text()
    t_stop = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    print(f"SIGTERM during the wait between polls: exit {proc.returncode} after {time.time() - t_stop:.2f} s")
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "{'done': 2, 'rejected': 1, 'failed': 0} studies recorded" in out, out
    assert len(segs_in(pacs)) == 2


def test_changed_package_is_refused_before_any_study(pacs, tmp_path, monkeypatch):
    from cohortseg import watch
    from cohortseg.package_files import PackageError

    monkeypatch.setenv("COHORTSEG_TEST_PACS", f"{orthanc.USER}:{orthanc.PASSWORD}")
    package = make_package(tmp_path)
    with open(package / "models" / "unet" / "fold1.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(PackageError, match="fold1.pt: checksum differs"):
        watch.run(watch.Config.from_config(watch_config(tmp_path, pacs.dicomweb)), package,
                  tmp_path / "studies.tsv", max_polls=1)
    assert not (tmp_path / "studies.tsv").exists()
