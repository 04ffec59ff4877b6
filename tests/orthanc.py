"""A throw-away PACS for tests: Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) started as a plain
process from a generated config, on free loopback ports, with HTTP basic authentication and its storage in
a temporary folder; stopped (SIGTERM) afterwards. ``.ci/run`` installs the packages under CI.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
USER, PASSWORD = "cohortseg", "test-only-secret"


def _binary() -> str | None:
    return shutil.which("Orthanc") or (("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)


def _dicomweb_plugin() -> str | None:
    for d in PLUGIN_DIRS:
        hits = sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []
        if hits:
            return str(hits[0])
    return None


def available() -> str | None:
    """None when Orthanc with its DICOMweb plugin can be started here, else why not."""
    if _binary() is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if _dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    folder: Path
    http_port: int
    dicom_port: int
    process: subprocess.Popen[bytes]
    started_s: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str, auth: bool = True) -> object:
        import requests

        r = requests.get(self.url + path, auth=(USER, PASSWORD) if auth else None, timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(folder: Path, timeout_s: float = 30, extra: dict[str, object] | None = None) -> Orthanc:
    """Start Orthanc in ``folder`` (config, storage, log) and wait until its REST API answers; ``extra``
    configuration on top (DICOM modalities, for the DIMSE tests)."""
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "cohortseg-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANCTEST", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "HttpTimeout": 30,
        "Plugins": [_dicomweb_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1, "SaveJobs": False, **(extra or {}),
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    t0 = time.time()
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([_binary() or "Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: see {folder / 'orthanc.log'}")
        try:
            if requests.get(f"http://127.0.0.1:{http_port}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return Orthanc(folder, http_port, dicom_port, proc, time.time() - t0)
        except requests.exceptions.ConnectionError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"Orthanc did not answer within {timeout_s} s: see {folder / 'orthanc.log'}")
