"""Starting N workers on this node: `mpirun`, `horovodrun --gloo`, or N supervised processes with TF_CONFIG
(`local`). Which of them a backend takes is the backend's fact (`Backend.launchers`).

Commands are argument lists, never shell strings. Every launcher ends the whole job when one worker
dies, so nothing waits for ever on a dead peer.
"""
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from hpctrain.errors import UserError

LAUNCHERS = ("mpirun", "horovodrun", "local")
# Variables forwarded to mpirun's ranks (Open MPI passes only what -x names).
_FORWARD_PREFIXES = ("HPCTRAIN_", "TF_", "HOROVOD_", "OMP_", "CUDA_", "NCCL_", "HDF5_", "PYTHON", "KMP_", "MKL_")
_FORWARD_NAMES = ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "HOME")


def _executable(name):
    path = shutil.which(name, path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if path is None:
        raise UserError(f"{name} not found (run ./install.sh)")
    return path


def mpirun_command(n, argv, env=None):
    env = os.environ if env is None else env
    # All ranks are on this node: shared memory only, so the ranks open no TCP listeners.
    cmd = [_executable("mpirun"), "-np", str(n), "-bind-to", "none", "-map-by", "slot", "--mca", "btl", "self,vader"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    if n > (os.cpu_count() or 1):
        cmd.append("--oversubscribe")
    for name in sorted(env):
        if name.startswith(_FORWARD_PREFIXES) or name in _FORWARD_NAMES:
            cmd += ["-x", name]
    return cmd + list(argv)


def horovodrun_command(n, argv):
    return [_executable("horovodrun"), "--gloo", "-np", str(n), "-H", f"localhost:{n}", *argv]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(workers, index):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def command(n, argv, launcher):
    """The command that `launch` runs (for --print); for `local`, one line per worker."""
    if launcher == "mpirun":
        return [mpirun_command(n, argv)]
    if launcher == "horovodrun":
        return [horovodrun_command(n, argv)]
    workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return [["env", f"TF_CONFIG={tf_config(workers, i)}", *argv] for i in range(n)]


def format_command(cmd):
    return shlex.join(cmd)


def run(n, argv, launcher, env=None, grace=10.0):
    """Runs N workers to completion; returns the job's exit code (0 only if every worker succeeded)."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r} (choose from {', '.join(LAUNCHERS)})")
    if n < 1:
        raise UserError(f"number of workers must be at least 1, not {n}")
    env = {**os.environ, **(env or {})}
    if launcher == "local":
        workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
        procs = [subprocess.Popen(argv, env={**env, "TF_CONFIG": tf_config(workers, i)}) for i in range(n)]
    else:
        cmd = mpirun_command(n, argv, env) if launcher == "mpirun" else horovodrun_command(n, argv)
        procs = [subprocess.Popen(cmd, env=env)]
    return supervise(procs, grace)


def supervise(procs, grace=10.0):
    """Waits for all processes; the first failure stops the rest (SIGTERM, then SIGKILL after `grace` s).
    SIGINT/SIGTERM to the launcher are passed on to the workers."""
    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed = None
        while any(p.poll() is None for p in procs) and failed is None:
            failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.1)
        failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), failed)
        if failed is None:
            return 0
        code = procs[failed].returncode
        what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        who = f"worker {failed}" if len(procs) > 1 else "the job"
        print(f"hpctrain launch: {who} {what}; stopping the others", file=sys.stderr, flush=True)
        _stop(procs, grace)
        return code if code > 0 else 128 - code
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _stop(procs, grace):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
