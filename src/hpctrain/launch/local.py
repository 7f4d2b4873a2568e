"""Starting N workers on this node or on hosts named by --hosts/--hostfile (hpctrain.launch.hosts):
`mpirun` (Open MPI's or an MPICH family's, told apart by its --version), `horovodrun --gloo`, or N supervised
processes with TF_CONFIG (`local`; on other hosts through the launch agent). Which of them a backend takes is
the backend's fact (`Backend.launchers`).

Commands are argument lists, never shell strings. Every launcher ends the whole job when one worker
dies, so nothing waits for ever on a dead peer.
"""
import collections
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from hpctrain.distribute import network
from hpctrain.errors import UserError
from hpctrain.launch import hosts as hosts_mod
from hpctrain.rundir import RunDir

LAUNCHERS = ("mpirun", "horovodrun", "local")
# Variables that mpirun's ranks need (Open MPI passes only what -x names; Hydra passes everything).
_FORWARD_PREFIXES = ("HPCTRAIN_", "TF_", "HOROVOD_", "OMP_", "CUDA_", "NCCL_", "HDF5_", "PYTHON", "KMP_", "MKL_")
_FORWARD_NAMES = ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "HOME", *network.INTERFACE_VARIABLES)


@dataclass(frozen=True)
class Plan:
    """How `launch` (or `bench`) starts a job's workers."""
    launcher: str
    processes: int
    overrides: tuple  # spec overrides that give the backend its workers
    where: object     # a hosts.Placement, or None: this node
    workers: int      # data-parallel workers in all


def plan(backend, n=None, launcher=None, hosts=None, hostfile=None, interface=None):
    """The Plan of `n` workers of a backend class: on this node, or on the hosts of --hosts/--hostfile."""
    if hosts or hostfile:
        named = hosts_mod.parse_hosts(hosts) if hosts else hosts_mod.read_hostfile(hostfile)
        n = len(hosts_mod.placement(named, n))
        launcher, processes, overrides = backend.hosts_plan(n, launcher)
        where = hosts_mod.place(named, n, interface, ports=launcher == "local")
        if where.interface and not interface:
            print(f"hpctrain: network interface {where.interface}, the one the host names resolve to "
                  "(distribute.interface chooses another)", flush=True)
        return Plan(launcher, processes, tuple(overrides), where, n)
    if n is None:
        raise UserError("-n N (workers on this node), or --hosts/--hostfile")
    launcher, processes, overrides = backend.local_plan(n, launcher)
    return Plan(launcher, processes, tuple(overrides), None, n)


def _forwarded(env):
    """The names of the variables a launcher passes on to workers on other hosts."""
    return [name for name in sorted(env) if name.startswith(_FORWARD_PREFIXES) or name in _FORWARD_NAMES]


def _executable(*names):
    """The first of `names` found next to this Python, then on PATH."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    raise UserError(f"{' or '.join(names)} not found (run ./install.sh)")


def mpi_launcher():
    """The mpirun (or, where there is none, mpiexec) that `hpctrain launch` starts."""
    return _executable("mpirun", "mpiexec")


@dataclass(frozen=True)
class MPIFamily:
    """One MPI family's launcher: how it names itself and how it is told what hpctrain needs. Every fact
    about a family's command line is here and nowhere else."""
    name: str              # as the family's library names its vendor (mpi4py's MPI.get_vendor())
    abi: str               # the ABI of its libmpi (mpi4py's extension variants: openmpi, mpich)
    banner: str            # regex on `mpirun --version`; group "version"
    placement: tuple       # ranks slot by slot, none bound to cores
    one_node: tuple        # all ranks on this node: shared memory only
    hosts: tuple           # ranks on the hosts "{}" (node1:2,node2:2), started through the agent "{agent}"
    interface: tuple       # the runtime and the ranks talk over interface "{}"
    as_root: tuple         # lets root start ranks
    oversubscribe: tuple   # more ranks than cores
    forward: tuple         # passes the _FORWARD_* variables to the ranks; with "{}": once per name, as the name

    def command(self, executable, n, argv, env, where=None):
        """The command line of n ranks: on this node, or on the hosts of a Placement."""
        cmd = [executable, "-np", str(n), *self.placement]
        if where is None:
            cmd += self.one_node
            if n > (os.cpu_count() or 1):
                cmd += self.oversubscribe
        else:
            cmd += [arg.format(where.counts(), agent=hosts_mod.agent()) for arg in self.hosts]
            if where.interface:
                cmd += [arg.format(where.interface) for arg in self.interface]
        if os.geteuid() == 0:
            cmd += self.as_root
        if "{}" in self.forward:
            cmd += [arg.format(name) for name in _forwarded(env) for arg in self.forward]
        else:
            cmd += self.forward
        return cmd + list(argv)


OPEN_MPI = MPIFamily(
    "Open MPI", "openmpi",
    banner=r"^\S+ \((?:Open MPI|OpenRTE)\) (?P<version>\S+)",  # mpirun (Open MPI) 4.1.4; mpiexec (OpenRTE) 4.1.4
    placement=("--bind-to", "none", "--map-by", "slot"),
    # Shared memory only, so the ranks open no TCP listeners. Open MPI 5 takes only the -- spellings.
    one_node=("--mca", "btl", "self,vader"),
    hosts=("-H", "{}", "--mca", "plm_rsh_agent", "{agent}"),
    interface=("--mca", "btl_tcp_if_include", "{}", "--mca", "oob_tcp_if_include", "{}"),
    as_root=("--allow-run-as-root",), oversubscribe=("--oversubscribe",), forward=("-x", "{}"))
# Hydra, MPICH's mpiexec: -bind-to none and -envall (the whole environment to every rank) are its defaults,
# said outright; it needs no option to start more ranks than cores, or to start them as root.
MPICH = MPIFamily(
    "MPICH", "mpich", banner=r"^HYDRA build details:\s*\n\s*Version:\s*(?P<version>\S+)",
    placement=("-bind-to", "none"), one_node=(),
    hosts=("-hosts", "{}", "-launcher", "ssh", "-launcher-exec", "{agent}"), interface=("-iface", "{}"),
    as_root=(), oversubscribe=(), forward=("-envall",))
# Intel MPI's mpiexec is a Hydra too, but pins every rank unless I_MPI_PIN says otherwise.
INTEL_MPI = MPIFamily(
    "Intel MPI", "mpich", banner=r"^Intel\(R\) MPI Library.*?Version (?P<version>[\d.]+)",
    placement=("-genv", "I_MPI_PIN", "0"), one_node=(), hosts=MPICH.hosts, interface=MPICH.interface,
    as_root=(), oversubscribe=(), forward=("-envall",))
FAMILIES = (OPEN_MPI, MPICH, INTEL_MPI)


def family_of(version_output):
    """(MPIFamily, version) that an `mpirun --version` output names, or (None, None)."""
    for family in FAMILIES:
        match = re.search(family.banner, version_output, re.MULTILINE)
        if match:
            return family, match["version"]
    return None, None


@functools.cache  # one --version run per path
def _version_output(executable):
    try:
        proc = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{executable} --version failed: {e}") from None
    return proc.stdout + proc.stderr


def launcher_family(executable):
    """(MPIFamily, version) of an mpirun/mpiexec, from its --version (run once per path)."""
    output = _version_output(executable)
    family, version = family_of(output)
    if family is None:
        first = next((line.strip() for line in output.splitlines() if line.strip()), "nothing")
        raise UserError(f"{executable} is not an MPI launcher hpctrain knows "
                        f"({', '.join(f.name for f in FAMILIES)}): its --version says {first!r}")
    return family, version


def mpirun_command(n, argv, env=None, where=None):
    """mpirun's command line for N ranks (on this node, or on a Placement's hosts), in the options of the
    MPI family it belongs to."""
    env = os.environ if env is None else env
    executable = mpi_launcher()
    return launcher_family(executable)[0].command(executable, n, argv, env, where)


def horovodrun_command(n, argv, where=None):
    cmd = [_executable("horovodrun"), "--gloo", "-np", str(n), "-H", where.counts() if where else f"localhost:{n}"]
    if where is not None and where.interface:
        cmd += ["--network-interfaces", where.interface]
    return cmd + list(argv)


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


def _workers(n, argv, env, where):
    """(name, argument list, environment, here) of each supervised worker of the `local` launcher: on this
    node, or on its host through the agent (with the forwarded variables and this folder, as mpirun does)."""
    if where is None:
        addresses = [f"127.0.0.1:{p}" for p in free_ports(n)]
        return [(f"worker {i}", list(argv), {**env, "TF_CONFIG": tf_config(addresses, i)}, True) for i in range(n)]
    addresses, out = where.addresses(), []
    for i, host in enumerate(where.workers):
        mine = {**env, "TF_CONFIG": tf_config(addresses, i)}
        if hosts_mod.is_local(host):
            out.append((f"worker {i} ({host})", list(argv), mine, True))
        else:
            command = ["env", "-C", os.getcwd(), *[f"{name}={mine[name]}" for name in _forwarded(mine)], *argv]
            out.append((f"worker {i} ({host})", hosts_mod.remote(host, command), env, False))
    return out


def _with_interface(env, where):
    """`env` with the transports' variables for the interface of a Placement (none without one)."""
    return {**env, **network.variables(where.interface if where else None)}


def command(n, argv, launcher, where=None):
    """The command that `launch` runs (for --print); for `local`, one line per worker."""
    env = _with_interface(os.environ, where)
    if launcher == "mpirun":
        return [mpirun_command(n, argv, env, where)]
    if launcher == "horovodrun":
        return [horovodrun_command(n, argv, where)]
    return [["env", f"TF_CONFIG={mine['TF_CONFIG']}", *cmd] if here else cmd
            for _, cmd, mine, here in _workers(n, argv, env, where)]


def format_command(cmd):
    return shlex.join(cmd)


def run(n, argv, launcher, env=None, grace=10.0, where=None, run_dir=None):
    """Runs N workers to completion; returns the job's exit code (0 only if every worker succeeded). When
    a rank of the run in `run_dir` ends a stalled job and the launcher then cannot end it (its daemons on
    a node behind a cut link), the job is ended here `grace` s later."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r} (choose from {', '.join(LAUNCHERS)})")
    if n < 1:
        raise UserError(f"number of workers must be at least 1, not {n}")
    env = {**_with_interface(os.environ, where), **(env or {})}
    stalled = RunDir(run_dir).stalled if run_dir else None
    if stalled is not None:
        stalled.unlink(missing_ok=True)
    if launcher == "local":
        workers = _workers(n, argv, env, where)
        procs = [subprocess.Popen(cmd, env=mine) for _, cmd, mine, _ in workers]
        return supervise(procs, grace, [name for name, *_ in workers], stalled)
    cmd = mpirun_command(n, argv, env, where) if launcher == "mpirun" else horovodrun_command(n, argv, where)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    tail = _Tail(proc.stderr)
    code = supervise([proc], grace, stalled=stalled)
    if code:
        tail.join()
        culprit = first_failure(tail.text(), where.workers if where else None)
        if culprit:
            print(f"hpctrain launch: {launcher} says the first to fail was {culprit}", file=sys.stderr, flush=True)
    return code


# What mpirun and horovodrun print about the rank or node that failed first.
_FIRST_FAILURE = (
    re.compile(r"Remote daemon: \S+ on node (?P<node>\S+)"),  # Open MPI lost a node's daemon
    re.compile(r"first process to do so was:\s*\n\s*Process name: (?:\[\[\d+,\d+\],)?(?P<rank>\d+)\]?\s*\n"
               r"\s*Exit code:\s*(?P<code>\d+)"),  # Open MPI and horovodrun
)


def first_failure(text, workers=None):
    """'rank 1 (node2), exit code 137' or 'node node2', from a launcher's messages; None if they name none."""
    for pattern in _FIRST_FAILURE:
        match = pattern.search(text)
        if match and "node" in match.groupdict():
            return f"node {match['node']}"
        if match:
            rank = int(match["rank"])
            host = f" ({workers[rank]})" if workers and rank < len(workers) else ""
            return f"rank {rank}{host}, exit code {match['code']}"
    return None


class _Tail(threading.Thread):
    """Copies a launcher's stderr through to ours, keeping its last lines."""

    def __init__(self, stream, lines=400):
        super().__init__(daemon=True)
        self.stream, self.lines = stream, collections.deque(maxlen=lines)
        self.start()

    def run(self):
        for raw in iter(self.stream.readline, b""):
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            self.lines.append(raw.decode(errors="replace"))

    def join(self, timeout=5.0):
        super().join(timeout)

    def text(self):
        return "".join(self.lines)


def supervise(procs, grace=10.0, names=None, stalled=None):
    """Waits for all processes; the first failure stops the rest (SIGTERM, then SIGKILL after `grace` s),
    and so does the file `stalled` that lives `grace` s. SIGINT/SIGTERM to the launcher are passed on to
    the workers."""
    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    def failed():
        return [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stalled_since = None
        while any(p.poll() is None for p in procs) and not failed():
            if stalled_since is None and stalled is not None and stalled.exists():
                stalled_since = time.monotonic()
            if stalled_since is not None and time.monotonic() - stalled_since > grace:
                print(f"hpctrain launch: the job did not end {grace:g} s after a rank stopped it "
                      f"({stalled.read_text().strip()}); ending it", file=sys.stderr, flush=True)
                _stop(procs, grace)
                return 1
            time.sleep(0.1)
        if not failed():
            return 0
        if len(procs) > 1:  # a worker killed by a signal is the cause, not its peers' errors that follow
            time.sleep(1.0)
        first = min(failed(), key=lambda i: not (procs[i].returncode < 0 or procs[i].returncode > 128))
        code = procs[first].returncode
        what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        if len(procs) > 1:
            who = (names or [f"worker {i}" for i in range(len(procs))])[first]
            print(f"hpctrain launch: {who} {what}; stopping the others", file=sys.stderr, flush=True)
        else:
            print(f"hpctrain launch: the job {what}", file=sys.stderr, flush=True)
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
