"""A throwaway one-node SLURM cluster for the workflow tests.

Starts munged, slurmctld and slurmd as plain background processes with every
config, key, socket, spool, state and log file under one temporary directory,
so it leaves /etc/munge and any cluster already running on the machine alone
(own munge key and socket, own ports). Clients find it through ``SLURM_CONF``:
pass ``Cluster.env`` to every subprocess that calls ``sbatch``/``squeue`` (that
includes Snakemake, which calls them for you).

One exception: inside a job, the slurm-jobstep plugin (0.6.1) removes every
``SLURM_*`` variable but the job ids before its ``srun``, ``SLURM_CONF``
included, so that ``srun`` only finds the default ``/etc/slurm/slurm.conf``.
While the cluster runs, that path is a symlink to ours; it is created only
where no such file exists, and removed again by ``stop()``.

Why the settings (measured on Debian 12 / SLURM 22.05, see the SLURM notes):
no cgroups in the sandbox (linuxproc + task/none); no slurmdbd, so ``sacct``
is useless and finished jobs are read from ``scontrol show job`` (kept there
by a high ``MinJobAge``) and from the ``jobcomp/filetxt`` log; a fake GPU
(``File=/dev/null``) so that ``resources: gpu=1`` -> ``--gpus=1`` is scheduled
like on a real GPU node.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PARTITION = "debug"  # the default partition
OTHER_PARTITION = "gpu"  # the same node, not the default: a job lands there only through -p
FEATURE = "fakegpu"  # the node's feature, so that a job's -C/--constraint can be met
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")  # where srun looks without SLURM_CONF
COMMANDS = ("sbatch", "squeue", "sinfo", "scontrol", "slurmctld", "slurmd", "munged")
# Daemons live in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _missing() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c, path=SEARCH_PATH) is None]


def _which(command: str) -> str:
    return shutil.which(command, path=SEARCH_PATH) or command


def ensure_slurm() -> str | None:
    """Install SLURM + munge with apt if missing; None if usable, else why not."""
    missing = _missing()
    if not missing:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"SLURM not installed ({', '.join(missing)} missing); needs root + apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends",
                 "slurm-wlm", "munge"]):
        try:
            subprocess.run(cmd, env=env, check=True, capture_output=True,
                           text=True, timeout=900)
        except subprocess.CalledProcessError as e:
            last = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["?"]
            return f"`{' '.join(cmd)}` failed: {last[0]}"
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` timed out"
    missing = _missing()
    return f"still missing after apt-get: {', '.join(missing)}" if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])
    return kb // 1024


def _tail(path: Path, n: int = 15) -> str:
    if not path.exists():
        return f"--- {path.name}: (missing)"
    return f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:])


class ClusterUnavailable(RuntimeError):
    """This machine can't host the test cluster (a reason to skip, not a failure)."""


@dataclass
class Cluster:
    root: Path
    host: str
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    linked_conf: Path | None = None  # the /etc/slurm/slurm.conf symlink we made

    def run(self, *cmd: str) -> str:
        """Run a SLURM client command against this cluster; return stdout."""
        return subprocess.run([_which(cmd[0]), *cmd[1:]], env=self.env, check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job this cluster has seen, as ``scontrol show job`` fields.

        Keys are SLURM's: JobId, JobName, JobState, Comment (the plugin puts
        the rule name there), TresPerJob (``gres:gpu:1`` for ``--gpus=1``),
        NumCPUs, MinMemoryNode, TimeLimit, ExitCode, ... ``scontrol`` keeps
        finished jobs for ``MinJobAge`` seconds; the jobcomp log (JobId,
        JobName, JobState, ExitCode only) fills in any that aged out since.
        """
        seen = {}
        for line in self.run("scontrol", "--oneliner", "show", "job").splitlines():
            job = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in job:  # else "No jobs in the system"
                seen[job["JobId"]] = job
        jobcomp = self.root / "log" / "jobcomp.log"
        for line in jobcomp.read_text().splitlines() if jobcomp.exists() else []:
            rec = dict(re.findall(r"(\w+)=(\S*)", line))
            seen.setdefault(rec["JobId"], {"JobId": rec["JobId"], "JobName": rec["Name"],
                                           "JobState": rec["JobState"],
                                           "ExitCode": rec["ExitCode"]})
        return sorted(seen.values(), key=lambda j: int(j["JobId"]))

    def stop(self) -> None:
        """Cancel our jobs, then stop only the daemons this object started."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            # running jobs' processes would outlive slurmd: cancel them first
            live = [j["JobId"] for j in self.jobs() if j["JobState"] not in FINAL_STATES]
            if live:
                subprocess.run([_which("scancel"), *live], env=self.env,
                               capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.linked_conf and self.linked_conf.is_symlink():
            self.linked_conf.unlink()
            self.linked_conf = None


def _write_config(root: Path, host: str) -> tuple[Path, Path]:
    """Write slurm.conf + gres.conf + a munge key under root; return conf, socket."""
    for sub in ("etc", "state", "spool", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o755)  # munged refuses group/other-writable dirs
    key = root / "munge" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    munge_socket = root / "munge" / "munge.socket"
    cpus = os.cpu_count() or 1
    mem = max(256, int(_mem_mb() * 0.8))  # headroom for the OS and the test itself
    conf = root / "etc" / "slurm.conf"
    conf.write_text(f"""\
ClusterName=sslseg-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
# no cgroups in containers/sandboxes
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=2
ReturnToService=2
# keep finished jobs visible to squeue (the status command without slurmdbd)
# and to Cluster.jobs() for a whole test session
MinJobAge=3600
# jobs are not requeued unless sbatch says --requeue (SLURM's default is to
# requeue), so a test sees whether the profile asks for it
JobRequeue=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.log
MpiDefault=none
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:1 Features={FEATURE} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName={OTHER_PARTITION} Nodes={host} Default=NO MaxTime=INFINITE State=UP
""")
    # A count-only gres line leaves the node INVAL; a File= makes it schedulable.
    (root / "etc" / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null\n")
    return conf, munge_socket


def start_cluster(tmp: Path, timeout: float = 60) -> Cluster:
    """Start munged + slurmctld + slurmd under tmp; return once the node is idle."""
    tmp = Path(tmp).resolve()
    host = socket.gethostname().split(".")[0]
    conf, munge_socket = _write_config(tmp, host)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root=tmp, host=host, env=env)
    if DEFAULT_CONF.is_symlink() and not DEFAULT_CONF.exists():
        DEFAULT_CONF.unlink()  # left dangling by a run that was killed
    if DEFAULT_CONF.exists():
        hint = " (a symlink: remove it if a killed test run left it)" * DEFAULT_CONF.is_symlink()
        raise ClusterUnavailable(
            f"{DEFAULT_CONF} exists{hint}: job steps would use that cluster, not the "
            "test one (the slurm-jobstep plugin drops SLURM_CONF)")
    try:
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(conf)
    except OSError as e:
        raise ClusterUnavailable(f"cannot link {DEFAULT_CONF}: {e}") from e
    cluster.linked_conf = DEFAULT_CONF
    log = tmp / "log"
    daemons = {
        "munged": [_which("munged"), "--foreground", "--force",
                   f"--socket={munge_socket}", f"--key-file={tmp}/munge/munge.key",
                   f"--pid-file={tmp}/munge/munged.pid", f"--log-file={log}/munged.log",
                   f"--seed-file={tmp}/munge/munged.seed"],
        # -i: ignore state left by a previous run in the same dir
        "slurmctld": [_which("slurmctld"), "-D", "-i", "-f", str(conf)],
        "slurmd": [_which("slurmd"), "-D", "-f", str(conf)],
    }
    try:
        for name, cmd in daemons.items():
            with open(log / f"{name}.stderr", "w") as err:
                # own session: a Ctrl-C in the terminal reaches pytest, whose
                # teardown then stops the daemons in order
                cluster.procs[name] = subprocess.Popen(
                    cmd, env=env, stdout=err, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)
            if name == "munged":
                _wait(lambda: munge_socket.exists(), 10, cluster, "munged socket")
        _wait(lambda: _node_state(cluster) == "idle", timeout, cluster, "node idle")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_state(cluster: Cluster) -> str:
    try:
        return cluster.run("sinfo", "--noheader", "-p", PARTITION, "-n", cluster.host, "-o", "%T").strip()
    except subprocess.SubprocessError:
        return ""


def _wait(ready, timeout: float, cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = cluster.root / "log"
            tails = "\n".join(_tail(p) for p in sorted(logs.glob("*")))
            why = f"exited: {', '.join(dead)}" if dead else f"timed out after {timeout:.0f}s"
            raise RuntimeError(f"test SLURM cluster not ready ({what}; {why}); logs:\n{tails}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM cluster for the session; skips if SLURM can't be had."""
    reason = ensure_slurm()
    if reason:
        pytest.skip(reason)
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except ClusterUnavailable as e:
        pytest.skip(str(e))
    yield cluster
    cluster.stop()
