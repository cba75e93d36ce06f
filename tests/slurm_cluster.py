"""A real one-node Slurm for the tests: munged, slurmctld and slurmd from Debian's packages,
started as this test run's own processes with every file in a temporary folder, and stopped
by their process ids. Nothing system-wide is touched (no /etc/slurm, no systemd)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def available() -> bool:
    """Whether this machine has the Slurm and munge programs (`just setup` installs them)."""
    return all(shutil.which(p) or Path("/usr/sbin", p).exists() for p in DAEMONS)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _config(folder: Path, socket_path: Path, cores: int, memory_mb: int) -> str:
    ctld_port, slurmd_port = _free_ports(2)
    user = os.environ.get("USER") or subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    host = socket.gethostname()
    return "\n".join([
        "ClusterName=vggtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        f"SlurmUser={user}",
        f"SlurmdUser={user}",
        f"AuthInfo=socket={socket_path}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "JobRequeue=1",
        "KillWait=20",  # time a step has to checkpoint after SIGTERM
        "MinJobAge=600",  # finished jobs stay visible to squeue for the test's length
        "ReturnToService=2",
        "MpiDefault=none",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cores} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@contextlib.contextmanager
def one_node_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd; yield the environment clients need (SLURM_CONF);
    stop the three by pid however the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(exist_ok=True)
    munge = folder / "munge"
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge.chmod(0o700)
    socket_path = munge / "munge.socket"
    conf = folder / "slurm.conf"
    memory_mb = max(1024, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20 // 2)
    conf.write_text(_config(folder, socket_path, os.cpu_count() or 1, memory_mb))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: list[subprocess.Popen] = []
    try:
        processes.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--socket={socket_path}", f"--key-file={key}",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
             f"--seed-file={munge}/munged.seed"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(lambda: socket_path.exists(), "munged", folder)
        for daemon in ("slurmctld", "slurmd"):
            log = (folder / f"{daemon}.out").open("w")
            processes.append(subprocess.Popen(
                [daemon, "-D"], env=env, stdout=log, stderr=subprocess.STDOUT))
        _wait_for(lambda: _node_idle(env), "the node to come up", folder)
        yield {"SLURM_CONF": str(conf)}
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _kill_leftover_jobs(folder)


def _node_idle(env: dict[str, str]) -> bool:
    shown = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
    return shown.returncode == 0 and shown.stdout.strip() in ("idle", "mixed", "allocated")


def _wait_for(ready, what: str, folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "".join(p.read_text()[-2000:] for p in sorted(folder.glob("*.log")))
            raise RuntimeError(f"Slurm test cluster: timed out waiting for {what}\n{logs}")
        time.sleep(0.2)


def _kill_leftover_jobs(folder: Path) -> None:
    """slurmstepd processes outlive slurmd by design; end any left from this cluster."""
    found = subprocess.run(["pgrep", "-f", "slurmstepd"], capture_output=True, text=True)
    for pid in found.stdout.split():
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if str(folder).encode() in environ:
                os.kill(int(pid), 9)
