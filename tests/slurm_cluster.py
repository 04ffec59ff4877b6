"""A throw-away single-node SLURM cluster for tests: munged, slurmctld and slurmd on this machine.

Needs Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them under CI) and root (the
daemons run as root here, as in a container). Everything lives in one folder (``slurm.conf`` and ``gres.conf`` also go to /etc/slurm, where
srun inside a job looks for them; never over a real installation's): ``slurm.conf``,
``gres.conf`` with two fake GPUs whose ``File=`` are character devices (Slurm 22.05 drops GPUs
declared without a device file and drains the node), spool and state folders, logs. Clients find
the cluster through ``SLURM_CONF``. No slurmdbd: ``MinJobAge`` keeps finished jobs in slurmctld
long enough for ``squeue``/``scontrol`` (the profile's status command) to see them.

Usage as a script: ``python tests/slurm_cluster.py start DIR`` / ``stop DIR``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd", "munged")
MARKER = "# cohortseg test cluster (tests/slurm_cluster.py)\n"


def available() -> str | None:
    """None when a cluster can be started here, else why not."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _conf(d: Path, host: str, cpus: int, mem_mb: int) -> str:
    return f"""ClusterName=cohortseg-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs={cpus} RealMemory={mem_mb} Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=04:00:00 State=UP
"""


def start(d: str | Path, cpus: int | None = None, mem_mb: int = 16000, timeout: float = 30.0) -> dict[str, str]:
    """Start the cluster in folder d; return the environment clients need (SLURM_CONF)."""
    d = Path(d).resolve()
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "dev"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        dev = d / "dev" / f"gpu{i}"
        if not dev.exists():
            os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
    conf = MARKER + _conf(d, host, cpus or os.cpu_count() or 1, mem_mb)
    gres = MARKER + f"NodeName={host} Name=gpu File={d}/dev/gpu[0-1]\n"
    # srun inside a batch job finds its configuration only at the default place (the job does not
    # inherit SLURM_CONF), so the test cluster's files go to /etc/slurm: only where none exist or
    # where an earlier test cluster wrote them
    etc = Path("/etc/slurm")
    etc.mkdir(parents=True, exist_ok=True)
    for name, text in (("slurm.conf", conf), ("gres.conf", gres)):
        target = etc / name
        if target.exists() and not target.read_text().startswith(MARKER):
            raise RuntimeError(f"{target} belongs to a real SLURM installation; not overwriting it")
        target.write_text(text)
        (d / name).write_text(text)
    env = {**os.environ, "SLURM_CONF": str(etc / "slurm.conf")}
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    subprocess.run(["/usr/sbin/slurmctld", "-f", env["SLURM_CONF"]], check=True, env=env)
    subprocess.run(["/usr/sbin/slurmd", "-f", env["SLURM_CONF"]], check=True, env=env)
    t0 = time.time()
    while time.time() - t0 < timeout:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.split()
        if out and all(s == "idle" for s in out):
            return {"SLURM_CONF": env["SLURM_CONF"]}
        time.sleep(0.5)
    logs = "".join((d / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log") if (d / f).exists())
    stop(d)
    raise RuntimeError(f"SLURM did not come up within {timeout} s:\n{logs}")


def stop(d: str | Path) -> None:
    d = Path(d).resolve()
    for name in ("slurmd", "slurmctld"):
        pid = d / f"{name}.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().strip()), 15)
            except (ProcessLookupError, ValueError):
                pass
    time.sleep(1)


def job_info(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """scontrol show job, as key -> value (finished jobs stay for MinJobAge seconds)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                         env={**os.environ, **env}).stdout
    info = {}
    for tok in out.split():
        if "=" in tok:
            k, _, v = tok.partition("=")
            info[k] = v
    return info


if __name__ == "__main__":
    cmd, folder = sys.argv[1], sys.argv[2]
    if cmd == "start":
        print(start(folder)["SLURM_CONF"])
    else:
        stop(folder)
