"""A private single-node Slurm cluster for the tests (pytest plugin; conftest.py loads it).

The session fixture `slurm` starts munged, slurmctld and slurmd from a temporary folder: its own munge key
and socket, free ports, a slurm.conf declaring 16 CPUs and 8 fake GPUs (character devices made with mknod),
and a jobcomp file. It waits until the node is idle, yields a `SlurmCluster` and shuts everything down at the
end. Nothing outside the folder is touched, so it runs beside a site's Slurm or a second test session.

slurm-wlm is installed by install.sh: without it (or without root) the tests fail under CI (CI=true) and
are skipped elsewhere. HPCTRAIN_KEEP_SLURM=1 keeps the folder (logs, config) for a post-mortem.
"""
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpctrain.launch.local import free_ports

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "squeue", "sinfo")
# States a job does not leave again (REQUEUED, PENDING, COMPLETING... are on the way).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}


class SlurmUnavailable(Exception):
    pass


@dataclass
class Job:
    id: str
    state: str
    exit_code: int           # of the batch script (ExitCode=N:signal)
    derived_exit_code: int   # highest of the job's steps
    restarts: int
    fields: dict

    @property
    def ok(self):
        return self.state == "COMPLETED" and self.exit_code == 0


def _parse_fields(line):
    """'A=1 B=x y C=2' -> {'A': '1', 'B': 'x y', 'C': '2'} (values may hold spaces, keys never)."""
    parts = re.split(r" (?=[A-Za-z:_/]+=)", line.strip())
    return dict(p.split("=", 1) for p in parts if "=" in p)


class SlurmCluster:
    def __init__(self, root, cpus=16, gpus=8):
        self.root, self.cpus, self.gpus = Path(root), cpus, gpus
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.jobcomp = self.root / "log" / "jobcomp.txt"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for name in list(self.env):  # a test session inside a Slurm job must not talk to that job
            if name.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and name != "SLURM_CONF":
                del self.env[name]
        self._started = []

    # Set-up and tear-down.
    def write_config(self):
        r = self.root
        for d in ("state", "spool", "log", "dev", "munge"):
            (r / d).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):  # /dev/null's numbers: Slurm wants character devices for GPU files
            dev = r / "dev" / f"gpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
        (r / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File={r}/dev/gpu[0-{self.gpus - 1}]\n")
        self.ctld_port, slurmd_port = free_ports(2)
        self.write_slurm_conf(f"""\
ClusterName=hpctrain-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmdSpoolDir={r}/spool
SlurmdPidFile={r}/slurmd.pid
SlurmdLogFile={r}/log/slurmd.log
KillWait=15
GresTypes=gpu
""", slurmd_port, f"""\
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def write_slurm_conf(self, own, slurmd_port, nodes):
        """slurm.conf: this cluster's `own` settings, what every test cluster shares, then its `nodes` lines."""
        r = self.root
        (r / "plugstack.conf").write_text("")  # not the site's /etc/slurm/plugstack.conf
        self.conf.write_text(own + f"""\
SlurmctldPort={self.ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Own munged; cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmctldPidFile={r}/slurmctld.pid
SlurmctldLogFile={r}/log/slurmctld.log
PlugStackConfig={r}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SlurmdParameters=config_overrides
EnforcePartLimits=ALL
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
MailProg=/bin/true
MinJobAge=30
ReturnToService=2
""" + nodes)

    def start(self):
        missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (./install.sh installs slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd needs root")
        self.write_config()
        self._start_munge()
        self._run("slurmctld", "-i")
        self._started.append(self.root / "slurmctld.pid")
        self._run("slurmd")
        self._started.append(self.root / "slurmd.pid")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            out = self.scontrol("show", "node", self.host, check=False).stdout
            if re.search(r"State=IDLE\b", out):
                return
            time.sleep(0.1)
        raise SlurmUnavailable(f"node {self.host} not idle after 30 s:\n{out}\n{self.logs()}")

    def _start_munge(self):
        m = self.root / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.root.chmod(0o755)  # munged checks that everyone may reach its socket
        m.chmod(0o755)
        user = ["runuser", "-u", "munge", "--"]
        try:
            pw = pwd.getpwnam("munge")
            for p in (m, key):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        except KeyError:
            user = []
        self._run(*user, "munged", f"--socket={self.munge_socket}", f"--key-file={key}",
                  f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
                  f"--log-file={m / 'munged.log'}", *(["--force"] if not user else []))
        self._started.append(m / "munged.pid")

    def _run(self, *cmd):
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        if proc.returncode:
            raise SlurmUnavailable(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")

    def stop(self):
        """Cancels what is left, stops the daemons, and ends any of them still alive (by pid)."""
        if self.conf.exists() and (self.root / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--full", f"--user={os.geteuid()}"], env=self.env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.squeue():
                time.sleep(0.2)
            subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True, timeout=30)
        self._wait_pids([p for p in self._started if p.name != "munged.pid"])
        if (self.root / "munge" / "munged.pid").exists():
            subprocess.run(["munged", "--stop", f"--socket={self.munge_socket}"], capture_output=True, timeout=30)
        self._wait_pids(self._started)

    def _wait_pids(self, pidfiles, timeout=15):
        pids = []
        for f in pidfiles:
            try:
                pids.append(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.1)
        for p in pids:
            os.kill(p, 9)

    # Helpers for tests.
    def scontrol(self, *args, check=True):
        proc = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30)
        if check and proc.returncode:
            raise AssertionError(f"scontrol {' '.join(args)}: {proc.stderr}")
        return proc

    def squeue(self):
        out = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True,
                             timeout=30).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def sbatch(self, *args, cwd=None, env=None):
        """Submits; returns the job id (raises with sbatch's message when it is refused)."""
        proc = subprocess.run(["sbatch", "--parsable", *map(str, args)], env={**self.env, **(env or {})},
                              cwd=cwd, capture_output=True, text=True, timeout=60)
        if proc.returncode:
            raise AssertionError(f"sbatch refused ({proc.returncode}): {proc.stderr}")
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id):
        """The job's Job record: from slurmctld while it knows the job, else the jobcomp file."""
        proc = self.scontrol("show", "job", "-o", str(job_id), check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            f = _parse_fields(proc.stdout.splitlines()[0])
            return Job(str(job_id), f.get("JobState", "?"), _code(f.get("ExitCode")),
                       _code(f.get("DerivedExitCode")), int(f.get("Restarts", 0)), f)
        f = self.completed().get(str(job_id))
        if f is None:
            return None
        return Job(str(job_id), f.get("JobState", "?"), _code(f.get("ExitCode")), _code(f.get("DerivedExitCode")),
                   -1, f)

    def completed(self):
        """The jobcomp file: the last record of each job id (a requeued job has one per run)."""
        records = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                f = _parse_fields(line)
                if "JobId" in f:
                    records[f["JobId"]] = f
        return records

    def wait(self, job_id, timeout=180, until=FINAL_STATES):
        """Polls until the job reaches one of `until`; returns its Job (raises on timeout, with the logs)."""
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job is not None and job.state in until:
                return job
            time.sleep(0.2)
        subprocess.run(["scancel", str(job_id)], env=self.env, capture_output=True, timeout=30)
        raise AssertionError(f"job {job_id} not {'/'.join(sorted(until))} within {timeout} s: {job}\n{self.logs()}")

    def run(self, *args, cwd=None, env=None, timeout=180):
        """sbatch + wait: the finished Job."""
        return self.wait(self.sbatch(*args, cwd=cwd, env=env), timeout)

    def logs(self, lines=30):
        out = []
        for name in ("log/slurmctld.log", "log/slurmd.log", "munge/munged.log"):
            p = self.root / name
            if p.exists():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(out)


def _code(value):
    """'75:0' -> 75."""
    try:
        return int((value or "0:0").split(":")[0])
    except ValueError:
        return -1


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="session")
def slurm():
    """A running private Slurm cluster (one node, 16 CPUs, 8 fake GPUs) for the whole session."""
    root = Path(tempfile.mkdtemp(prefix="hpctrain-slurm-"))
    cluster = SlurmCluster(root)
    try:
        problem = None
        try:
            cluster.start()
        except SlurmUnavailable as e:
            problem = str(e)
        if problem and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Slurm test cluster unavailable under CI: {problem}", pytrace=False)
        if problem:
            pytest.skip(f"Slurm test cluster unavailable: {problem}")
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("HPCTRAIN_KEEP_SLURM") != "1":
            shutil.rmtree(root, ignore_errors=True)
