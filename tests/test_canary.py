"""Self-test of the privacy canary's scanner (tests/canary.py): a marker planted where a plain grep cannot
see it (inside a table embedded in an HTML report as a base64 data URI, inside a .nii.gz header, inside a
zip member, gzip inside base64) is found, with the layer it was found in; clean files give no hit."""

from __future__ import annotations

import base64
import gzip
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

from .canary import scan

MARKER = "ZQXCANARY"


def _report(tmp: Path, payload: bytes, mime: str = "text/tab-separated-values") -> Path:
    uri = f"data:{mime};charset=utf8;filename=included.tsv;base64,{base64.b64encode(payload).decode()}"
    html = f'<html><script>var data = {{"data_uri": "{uri}"}};</script><p>sub-1234</p></html>'
    path = tmp / "report.html"
    path.write_text(html)
    return path


def test_scanner_finds_markers_where_a_grep_cannot(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    _report(planted, f"subject\tseries_description\nsub-1\tAX T1 {MARKER}\n".encode())
    assert MARKER.encode() not in (planted / "report.html").read_bytes(), "the marker must be hidden from a grep"
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    img.header["descrip"] = f"converted {MARKER}".encode()
    nib.save(img, str(planted / "image.nii.gz"))
    assert MARKER.encode() not in (planted / "image.nii.gz").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model/labels.csv", f"1,lesion,{MARKER}\n" * 50)
    (planted / "package.zip").write_bytes(buf.getvalue())
    nested = tmp_path / "nested"
    nested.mkdir()
    _report(nested, gzip.compress(f"deep {MARKER}".encode()), "application/gzip")
    named = tmp_path / "named"
    (named / f"sub-{MARKER}").mkdir(parents=True)

    result = scan([planted, nested, named], tmp_path, {MARKER: "TEST"})
    where = sorted(result.hits)
    print("\n".join(where))
    assert any("planted/report.html > data-uri#0" in h for h in where), where
    assert any("planted/image.nii.gz > gzip" in h for h in where), where
    assert any("planted/package.zip > zip:model/labels.csv" in h for h in where), where
    assert any("nested/report.html > data-uri#0 > gzip" in h for h in where), where
    assert any(h.startswith("TEST in path named/") for h in where), where
    assert len(result.decoded) >= 4


def test_scanner_is_quiet_on_clean_files(tmp_path: Path) -> None:
    _report(tmp_path, b"subject\tseries_description\nsub-1\tAX T1 [x]\n")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(tmp_path / "image.nii.gz"))
    result = scan([tmp_path], tmp_path, {MARKER: "TEST"})
    assert not result.hits and len(result.files) == 2 and result.decoded
