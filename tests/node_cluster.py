"""A multi-node test cluster on this one machine (pytest plugin; conftest.py loads it).

The session fixture `nodes` yields a `NodeCluster`: nodes `node1`, `node2` (by default), each a network
namespace plus a persistent UTS namespace (its own hostname). Commands enter a node with `nsenter --net --uts`
and `unshare --mount`, which binds the node's own hosts, nsswitch.conf (`hosts: files`) and resolv.conf
(127.0.0.1) over /etc and the node's own <root>/nodes/<name>/local over <root>/scratch (one node-local path,
as /tmp or /local on real nodes), exports TMPDIR=<root>/nodes/<name>/tmp and pins to the node's core with taskset.
Everything else (file system, PIDs, /sys) is shared, as cluster nodes share NFS.

Network: a private bridge in the root namespace holding the head address x.y.z.1 of a random unused
10.a.b.0/24, one veth per node (eth0 in the node, x.y.z.(10+i)), no default route, no IPv6; plus `dummy0` in
every node with an address of another /24 that goes nowhere (packets are dropped), for jobs that pick the
wrong interface. Interface and namespace names carry a per-session tag, so sessions run side by side.

Slurm: munged and slurmctld (hostname `head`, on the bridge address) in the root network namespace, one
slurmd inside each node (2 CPUs each, oversubscribing the node's one core), partition `debug` with all nodes.
`root/bin/ssh` is an ssh-like launch agent for mpirun and horovodrun, `root/bin/node-exec NODE CMD...` runs
CMD on a node. Same policy as slurm_cluster.py: unavailable -> fail under CI (CI=true), skip elsewhere;
HPCTRAIN_KEEP_SLURM=1 keeps the folder.
"""
import atexit
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpctrain.launch.local import free_ports

from slurm_cluster import CLIENTS, DAEMONS, SlurmCluster, SlurmUnavailable, _alive

TOOLS = ("ip", "nsenter", "unshare", "taskset", "mount", "umount")
# Runs "$@" inside a node's mount namespace: sh -c ENTER NAME ETC TMPDIR CORES LOCAL SCRATCH CMD... LOCAL is
# bound over SCRATCH, the cluster's one node-local path, so that one path holds each node's own files.
ENTER = ('for f in hosts nsswitch.conf resolv.conf; do mount --bind "$1/$f" "/etc/$f" || exit 126; done; '
         'mount --bind "$4" "$5" || exit 126; export TMPDIR="$2"; c="$3"; shift 5; exec taskset -c "$c" "$@"')
NULL_LINKS = ("dummy", "ifb", "veth peer name dummy0p")  # dummy0's kind: the first this kernel has


@dataclass
class Node:
    name: str
    index: int       # 1-based
    core: str        # taskset -c list
    address: str     # eth0
    dummy_address: str
    netns: str       # name under /run/netns
    link: str        # root-side veth
    dir: Path        # root/nodes/<name>: local/, tmp/, etc/, spool/, uts

    @property
    def netns_path(self):
        return f"/run/netns/{self.netns}"

    @property
    def local(self):
        """The node-local folder."""
        return self.dir / "local"

    @property
    def tmp(self):
        """TMPDIR on the node (and Slurm's TmpFS)."""
        return self.dir / "tmp"


class NodeCluster(SlurmCluster):
    """Nodes on private namespaces with Slurm across them; see the module docstring."""

    interface = "eth0"
    unusable_interface = "dummy0"

    def __init__(self, root, n=2, names=None, ssh_timeout=120, head="head"):
        super().__init__(root)
        self.names = list(names or [f"node{i}" for i in range(1, n + 1)])
        self.host = head                                # SlurmctldHost
        self.ssh_timeout = ssh_timeout                  # seconds the agent hangs for a node marked down
        self.bin = self.root / "bin"
        self.scratch = self.root / "scratch"           # node-local: on each node its own nodes/<name>/local
        self.tag = self.bridge = self.subnet = self.head_address = None
        self.nodes = {}                                 # name -> Node, filled by start()
        self._head_dir = self.root / "head"
        self._cores = sorted(os.sched_getaffinity(0))
        self._up = False

    # Addresses and names.
    def _node(self, node):
        try:
            return self.nodes[node]
        except KeyError:
            raise KeyError(f"no node {node!r} (nodes: {', '.join(self.nodes)})") from None

    def address(self, node):
        return self._node(node).address

    def dummy_address(self, node):
        return self._node(node).dummy_address

    def link(self, node):
        """The node's veth in the root namespace (bridge side)."""
        return self._node(node).link

    # Running things on a node.
    def command(self, node, argv):
        """The argv that runs `argv` on the node (for subprocess)."""
        n = self._node(node)
        return ["nsenter", f"--net={n.netns_path}", f"--uts={n.dir / 'uts'}", "--", "unshare", "--mount", "--",
                "/bin/sh", "-c", ENTER, n.name, str(n.dir / "etc"), str(n.tmp), n.core, str(n.local), str(self.scratch),
                *map(str, argv)]

    def popen(self, node, argv, **kwargs):
        return subprocess.Popen(self.command(node, argv), **{"env": self.env, **kwargs})

    def on(self, node, *argv, **kwargs):
        """Runs argv on the node (text, captured, 60 s timeout by default); the CompletedProcess."""
        return subprocess.run(self.command(node, argv),
                              **{"env": self.env, "capture_output": True, "text": True, "timeout": 60, **kwargs})

    # Faults.
    def set_link(self, node, up):
        """Cuts the node's link, or mends it: up again, with the neighbour entries that failed meanwhile
        forgotten (else connections see 'No route to host' until the kernel retries them)."""
        subprocess.run(["ip", "link", "set", self.link(node), "up" if up else "down"], check=True)
        if up:
            for n in self.nodes.values():
                subprocess.run(["ip", "-n", n.netns, "neigh", "flush", "dev", "eth0"], capture_output=True)
            subprocess.run(["ip", "neigh", "flush", "dev", self.bridge], capture_output=True)
            probe = f"import socket; socket.create_connection(('{self.head_address}', {self.ctld_port}), 1).close()"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the node reaches slurmctld on the head again
                if self.on(node, "/usr/bin/python3", "-c", probe).returncode == 0:
                    break
                time.sleep(0.1)

    def shape(self, node, rate=None):
        """Limits the node's link to `rate` (tc's units, e.g. "1gbit") both ways with a token bucket (tbf: the
        kernel here has no netem), or lifts the limit (None)."""
        n = self._node(node)
        for prefix in ([], ["ip", "netns", "exec", n.netns]):
            dev = n.link if not prefix else "eth0"
            subprocess.run([*prefix, "tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
            if rate:
                subprocess.run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate,
                                "burst", "1mb", "latency", "50ms"], check=True, capture_output=True)

    def link_bytes(self, node):
        """(rx, tx) bytes of the node's root-side veth (tx: towards the node)."""
        out = subprocess.run(["ip", "-s", "-j", "link", "show", "dev", self.link(node)], capture_output=True,
                             text=True, check=True).stdout
        stats = json.loads(out)[0]["stats64"]
        return stats["rx"]["bytes"], stats["tx"]["bytes"]

    def set_down(self, node, down=True, hang=None):
        """Marks the node down for the ssh agent: it hangs `hang` s (default ssh_timeout) like a lost host."""
        flag = self.root / "down" / self._node(node).name
        if down:
            flag.write_text("" if hang is None else str(hang))
        else:
            flag.unlink(missing_ok=True)

    def slurmd_pid(self, node):
        try:
            return int((self.root / "run" / f"slurmd.{self._node(node).name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self, node, include_daemons=True):
        """Pids of the processes in the node's network namespace (without its slurmd unless include_daemons)."""
        pids = _ns_pids("net", self._node(node).netns_path)
        skip = None if include_daemons else self.slurmd_pid(node)
        return [p for p in pids if p != skip]

    def training_pids(self, node, everything=False):
        """Pids of the node's `hpctrain train` processes (everything=True: of every process but slurmd)."""
        pids = self.pids(node, include_daemons=False)
        if everything:
            return pids
        return [p for p in pids if b"hpctrain\0train" in _cmdline(p)]

    def kill_node(self, node, slurmd=False, timeout=10):
        """SIGKILLs every process of the node but its slurmd (that too if slurmd=True); returns their pids."""
        pids = self.pids(node, include_daemons=slurmd)
        _kill_all(pids, timeout)
        return pids

    # Set-up and tear-down.
    def start(self):
        missing = [t for t in TOOLS + DAEMONS + CLIENTS if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)} (./install.sh installs slurm-wlm munge)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("network namespaces and slurmd need root")
        atexit.register(self.stop)
        self._up = True
        self._network()
        self._write_bin()
        self.write_config()
        self._start_munge()
        self._start_daemons()
        self.heal(timeout=30)

    def _network(self):
        """Picks the tag and subnets, makes the namespaces, the bridge, the veths and the node files."""
        rng = random.SystemRandom()
        for _ in range(20):  # creating the bridge claims the tag: the kernel refuses a name twice
            tag = f"{rng.randrange(16 ** 4):04x}"
            cmd = ["ip", "link", "add", f"hpc{tag}br", "type", "bridge"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                self.tag, self.bridge = tag, f"hpc{tag}br"
                break
        else:
            raise SlurmUnavailable(f"cannot create a bridge: {proc.stderr.strip()}")
        net, dummy = _free_subnets(2, rng)
        self.subnet = str(net)
        self.head_address = str(net[1])
        cores = self._cores
        for i, name in enumerate(self.names, 1):
            self.nodes[name] = Node(name, i, str(cores[(i - 1) % len(cores)]), str(net[10 + i]), str(dummy[10 + i]),
                                    f"hpctrain-{self.tag}-{name}", f"hpc{self.tag}v{i}", self.root / "nodes" / name)
        hosts = "127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in self._hosts().items())
        for n in self.nodes.values():
            for d in ("local", "tmp", "spool"):
                (n.dir / d).mkdir(parents=True, exist_ok=True)
        for d in [n.dir for n in self.nodes.values()] + [self._head_dir]:
            (d / "etc").mkdir(parents=True, exist_ok=True)
            (d / "tmp").mkdir(exist_ok=True)
            (d / "etc" / "hosts").write_text(hosts)
            (d / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            (d / "etc" / "nsswitch.conf").write_text(_nsswitch())
            (d / "uts").touch()
        for d in ("bin", "down", "run", "log", "scratch"):
            (self.root / d).mkdir(exist_ok=True)
        v6 = "/proc/sys/net/ipv6/conf"
        script = [f"[ ! -d {v6} ] || echo 1 > {v6}/{self.bridge}/disable_ipv6",
                  f"ip addr add {self.head_address}/24 dev {self.bridge}", f"ip link set {self.bridge} up",
                  f"unshare --uts={self._head_dir / 'uts'} hostname {self.host}"]
        for n in self.nodes.values():
            inside = [f"[ ! -d {v6} ] || echo 1 > {v6}/eth0/disable_ipv6", "ip link set lo up",
                      f"ip addr add {n.address}/24 dev eth0", "ip link set eth0 up",
                      " || ".join(f"ip link add dummy0 type {kind} 2>/dev/null" for kind in NULL_LINKS),
                      f"[ ! -d {v6} ] || echo 1 > {v6}/dummy0/disable_ipv6",
                      f"ip addr add {n.dummy_address}/24 dev dummy0", "ip link set dummy0 up"]
            script += [f"ip netns add {n.netns}", f"ip link add {n.link} type veth peer name eth0 netns {n.netns}",
                       f"[ ! -d {v6} ] || echo 1 > {v6}/{n.link}/disable_ipv6",
                       f"ip link set {n.link} master {self.bridge} up",
                       f"nsenter --net={n.netns_path} sh -ec {shlex.quote('; '.join(inside))}",
                       f"unshare --uts={n.dir / 'uts'} hostname {n.name}"]
        proc = subprocess.run(["sh", "-exc", "\n".join(script)], capture_output=True, text=True, timeout=30)
        if proc.returncode:
            raise SlurmUnavailable(f"network set-up failed ({proc.returncode}):\n{proc.stderr[-3000:]}")

    def _hosts(self):
        return {self.host: self.head_address, **{n.name: n.address for n in self.nodes.values()}}

    def _write_bin(self):
        cases = "".join(f"  {shlex.quote(name)}) shift; exec {shlex.join(self.command(name, []))} \"$@\" ;;\n"
                        for name in self.nodes)
        (self.bin / "node-exec").write_text(
            f"#!/bin/sh\n# node-exec NODE CMD...: runs CMD on NODE of the test cluster in {self.root}\n"
            f'case "$1" in\n{cases}  *) echo "node-exec: no node $1 (nodes: {" ".join(self.nodes)})" >&2; exit 2 ;;\n'
            "esac\n")
        config = {"timeout": self.ssh_timeout, "down": str(self.root / "down"),
                  "nodes": {n.name: {"prefix": self.command(n.name, []), "tmp": str(n.tmp),
                                     "address": n.address} for n in self.nodes.values()}}
        (self.bin / "ssh").write_text(AGENT.replace("@CONFIG@", repr(config)))
        for f in ("node-exec", "ssh"):
            (self.bin / f).chmod(0o755)

    def write_config(self):
        r = self.root
        (r / "state").mkdir(exist_ok=True)
        (r / "munge").mkdir(exist_ok=True)
        self.ctld_port, slurmd_port = free_ports(2)
        node_lines = "".join(f"NodeName={n.name} NodeAddr={n.address} CPUs=2 Boards=1 SocketsPerBoard=1 "
                             "CoresPerSocket=2 ThreadsPerCore=1 State=UNKNOWN\n" for n in self.nodes.values())
        self.write_slurm_conf(f"""\
ClusterName=hpctrain-nodes
SlurmctldHost={self.host}({self.head_address})
SlurmdSpoolDir={r}/nodes/%n/spool
SlurmdPidFile={r}/run/slurmd.%n.pid
SlurmdLogFile={r}/log/slurmd.%n.log
# A step's PMIx folder is per node only under TmpFS (a shared /tmp makes the second node fail).
TmpFS={r}/nodes/%n/tmp
KillWait=5
SlurmdTimeout=30
""", slurmd_port, node_lines + f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE "
                                "State=UP\n")

    def _start_daemons(self):
        head = ["nsenter", f"--uts={self._head_dir / 'uts'}", "--", "unshare", "--mount", "--", "/bin/sh", "-c",
                ENTER, self.host, str(self._head_dir / "etc"), str(self._head_dir / "tmp"),
                ",".join(map(str, self._cores)), str(self._head_dir / "tmp"), str(self.scratch)]
        self._run(*head, "slurmctld", "-i")
        self._started.append(self.root / "slurmctld.pid")
        for name in self.nodes:
            self.start_slurmd(name)
            self._started.append(self.root / "run" / f"slurmd.{name}.pid")

    def start_slurmd(self, name):
        """Starts the node's slurmd (one already running is replaced): it registers with slurmctld as it starts."""
        self._run(*self.command(name, ["slurmd", "-N", name]))

    def heal(self, timeout=120):
        """Every node back to IDLE after a fault: a dead slurmd started again, a node that Slurm set DOWN or
        DRAIN (after a killed slurmd or a cut link) resumed once its slurmd answers; else an error with the logs."""
        for name in self.nodes:
            if self.slurmd_pid(name) is None or not _alive(self.slurmd_pid(name)):
                self.start_slurmd(name)
        deadline = time.monotonic() + timeout
        silent = {}  # node -> when it was first seen not responding; its slurmd registers again when restarted
        while True:
            out = self.scontrol("show", "node", "-o", check=False).stdout
            states = dict(re.findall(r"NodeName=(\S+) .*?State=(\S+)", out))
            if all(states.get(name) == "IDLE" for name in self.nodes):
                return
            for name, state in states.items():
                if ("DOWN" in state or "DRAIN" in state) and "NOT_RESPONDING" not in state:
                    self.scontrol("update", f"NodeName={name}", "State=RESUME", check=False)
                if "NOT_RESPONDING" not in state:
                    silent.pop(name, None)
                elif time.monotonic() - silent.setdefault(name, time.monotonic()) > 20:
                    # a registration lost while the link was down is not retried before slurmctld's next ping
                    self.start_slurmd(name)
                    silent[name] = time.monotonic()
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"nodes not idle after {timeout} s: {states}\n{out}\n{self.logs()}")
            time.sleep(0.2)

    def stop(self):
        """Tears everything down (idempotent): Slurm, every process left in the nodes, links, namespaces, root."""
        if not self._up:
            self._remove_root()
            return
        self._up = False
        atexit.unregister(self.stop)
        try:
            for name in self.nodes:  # a cut link or a down flag must not slow the shutdown
                subprocess.run(["ip", "link", "set", self.link(name), "up"], capture_output=True)
                self.set_down(name, False)
            if self.conf.exists():
                super().stop()
        finally:
            for n in self.nodes.values():
                _kill_all(_ns_pids("net", n.netns_path) + _ns_pids("uts", n.dir / "uts"))
            _kill_all(_ns_pids("uts", self._head_dir / "uts"))
            for n in self.nodes.values():
                subprocess.run(["ip", "netns", "del", n.netns], capture_output=True)
                subprocess.run(["ip", "link", "del", n.link], capture_output=True)
            if self.bridge:
                subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            for d in [n.dir for n in self.nodes.values()] + [self._head_dir]:
                if (d / "uts").exists():
                    subprocess.run(["umount", "-l", str(d / "uts")], capture_output=True)
            self._remove_root()

    def _remove_root(self):
        if os.environ.get("HPCTRAIN_KEEP_SLURM") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def logs(self, lines=30):
        out = []
        names = ["log/slurmctld.log", *(f"log/slurmd.{n}.log" for n in self.nodes), "munge/munged.log"]
        for p in (self.root / name for name in names):
            if p.exists():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(out)


def _nsswitch():
    """The machine's nsswitch.conf with `hosts: files` (no DNS from a node)."""
    try:
        text = Path("/etc/nsswitch.conf").read_text()
    except OSError:
        text = "passwd: files\ngroup: files\nshadow: files\n"
    text = re.sub(r"(?m)^hosts:.*\n?", "", text)
    return text.rstrip("\n") + "\nhosts: files\n"


def _free_subnets(k, rng):
    """k random 10.a.b.0/24 networks that no address or route of the root namespace touches."""
    out = subprocess.run(["sh", "-c", "ip -4 -o addr; ip -4 route show table all; cat /etc/resolv.conf"],
                         capture_output=True, text=True).stdout
    used = [ipaddress.ip_network(m, strict=False) for m in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", out)]
    used = [u for u in used if u.prefixlen > 0]
    picked = []
    while len(picked) < k:
        net = ipaddress.ip_network(f"10.{rng.randrange(16, 250)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used + picked):
            picked.append(net)
    return picked


def _ns_pids(kind, ns_file):
    """Pids of the processes in the namespace bound at ns_file (kind: net, uts)."""
    try:
        st = os.stat(ns_file)
    except OSError:
        return []
    me, pids = os.getpid(), []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            try:
                s = os.stat(f"/proc/{d}/ns/{kind}")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                pids.append(int(d))
    return pids


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _program(pid):
    return _cmdline(pid).split(b"\0")[0].decode(errors="replace")


def _kill_all(pids, timeout=10):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


# Faults of a node while a job trains: name -> (inject, repair), each called with (cluster, node).
def _freeze(cluster, node):
    for pid in cluster.training_pids(node):
        os.kill(pid, signal.SIGSTOP)


FAULTS = {  # "node killed": everything on it, its slurmd too, as when a node crashes
    "node killed": (lambda c, node: c.kill_node(node, slurmd=True), lambda c, node: c.heal()),
    "link cut": (lambda c, node: c.set_link(node, False), lambda c, node: c.set_link(node, True)),
    "rank frozen": (_freeze, lambda c, node: _kill_all(c.training_pids(node))),
}


@dataclass
class Outcome:
    code: int          # the job's exit code
    seconds: float     # from the fault to the job's end
    stderr: str
    leftovers: dict    # node -> "PID COMMAND" of the job's processes still there 15 s after its end


def fault_run(cluster, argv, env, run_dir, fault, node="node2", timeout=300, started=None):
    """Runs argv on node1; once the run in `run_dir` has ended an epoch, injects FAULTS[fault] on `node`
    and times the job's end. `started` (a callable) replaces the epoch check, e.g. for Slurm jobs."""
    inject, repair = FAULTS[fault]
    if (run_dir / "metrics.jsonl").exists():
        raise ValueError(f"{run_dir} holds an earlier run: its epoch would not be this job's")
    log = Path(tempfile.mkstemp(prefix="hpctrain-fault-", suffix=".err")[1])
    with open(log, "w") as err:
        proc = cluster.popen("node1", argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + timeout
        while not (run_dir / "metrics.jsonl").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the job ended or stalled before training ({proc.poll()}):\n"
                                     f"{log.read_text()[-3000:]}")
            time.sleep(0.1)
        injected = time.monotonic()
        inject(cluster, node)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        seconds = time.monotonic() - injected
        settle = time.monotonic() + 15  # processes a launcher has just signalled may take a moment to go
        while any(cluster.training_pids(n, everything=True) for n in cluster.names) and time.monotonic() < settle:
            time.sleep(0.2)
        leftovers = {n: [f"{pid} {_program(pid)}" for pid in cluster.training_pids(n, everything=True)]
                     for n in cluster.names}
        return Outcome(code, seconds, log.read_text(errors="replace"), leftovers)
    finally:
        repair(cluster, node)
        for n in cluster.names:
            cluster.kill_node(n)
        cluster.heal()  # the next job finds every node in Slurm again
        log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def nodes():
    """A running multi-node cluster (node1, node2; Slurm across them) for the whole session."""
    cluster = NodeCluster(Path(tempfile.mkdtemp(prefix="hpctrain-nodes-")))
    try:
        problem = None
        try:
            cluster.start()
        except SlurmUnavailable as e:
            problem = str(e)
        if problem and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"node test cluster unavailable under CI: {problem}", pytrace=False)
        if problem:
            pytest.skip(f"node test cluster unavailable: {problem}")
        yield cluster
    finally:
        cluster.stop()


AGENT = r'''#!/usr/bin/python3
"""ssh [options] [user@]host [options] [command...]: runs the command inside a node of the test cluster.

Like OpenSSH as mpirun and horovodrun use it: options are skipped before and after the host, the rest is
joined by spaces and run with `sh -c` in the node (cwd $HOME), in a new session, with only PATH, HOME,
USER, LOGNAME, LANG, LD_LIBRARY_PATH and the node's TMPDIR. When this process gets SIGTERM/SIGHUP/SIGINT or
its parent dies, the command's process group gets SIGTERM (and SIGCONT), then SIGKILL after 5 s (as sshd does
when the connection drops); when this process is killed outright, the command gets SIGKILL. Exit code: the
command's (128+N for signal N); 255 for ssh's own errors.
"""
import ctypes
import os
import pwd
import signal
import sys
import time

CONFIG = @CONFIG@
WITH_ARG = set("opilFEbcDeIJLmOQRSWwB")
PASS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LD_LIBRARY_PATH")
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class HangUp(Exception):
    pass


def fail(message):
    print(f"ssh: {message}", file=sys.stderr)
    sys.exit(255)


def parse(args):
    """-> (host, command words, {option letter: [values] (empty for a flag)})."""
    host, options, i = None, {}, 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            if host is None and i < len(args):
                host, i = args[i], i + 1
            break
        if not a.startswith("-") or a == "-":
            if host is not None:
                break
            host, i = a, i + 1
            continue
        for j, c in enumerate(a[1:], 2):
            options.setdefault(c, [])
            if c in WITH_ARG:
                value = a[j:]
                if not value:
                    i += 1
                    if i == len(args):
                        fail(f"option requires an argument -- {c}")
                    value = args[i]
                options.setdefault(c, []).append(value)
                break
        i += 1
    if host is None:
        fail("usage: ssh [options] destination [command [argument ...]]")
    return host.rsplit("@", 1)[-1], args[i:], options


def connect_timeout(options):
    for o in options.get("o", []):
        key, _, value = o.replace("=", " ", 1).partition(" ")
        if key.lower() == "connecttimeout" and value.strip().isdigit():
            return int(value.strip())
    return None


def group_alive(pgid):
    """Whether a live (not zombie) process is left in the group."""
    try:
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                state, _, group = f.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z" and int(group) == pgid:
            return True
    return False


def end(pid):
    """TERM (with CONT, as a terminal's hang-up wakes stopped processes), then (after 5 s) KILL to the
    command's process group."""
    for sigs, grace in (((signal.SIGTERM, signal.SIGCONT), 5), ((signal.SIGKILL,), 2)):
        for sig in sigs:
            for kill in (os.killpg, os.kill):  # the child may not have called setsid yet
                try:
                    kill(pid, sig)
                    break
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def on_signal(sig, _frame):
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise HangUp(sig)


def main(args):
    host, words, options = parse(args)
    nodes = CONFIG["nodes"]
    name = host if host in nodes else next((n for n, v in nodes.items() if v["address"] == host), None)
    if name is None:
        fail(f"Could not resolve hostname {host}: Name or service not known")
    flag = os.path.join(CONFIG["down"], name)
    if os.path.exists(flag):
        with open(flag) as f:
            hang = f.read().strip()
        wait = connect_timeout(options)
        time.sleep(wait if wait is not None else float(hang or CONFIG["timeout"]))
        fail(f"connect to host {host} port {options.get('p', ['22'])[-1]}: Connection timed out")
    env = {k: os.environ[k] for k in PASS if k in os.environ}
    user = pwd.getpwuid(os.getuid())
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("HOME", user.pw_dir)
    env.setdefault("USER", user.pw_name)
    env.setdefault("LOGNAME", env["USER"])
    env["TMPDIR"] = nodes[name]["tmp"]
    command = " ".join(words)
    argv = nodes[name]["prefix"] + (["sh", "-c", command] if command else ["sh"])

    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG: the caller's death is a hang-up
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    for s in SIGNALS:
        signal.signal(s, on_signal)
    agent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            # This agent killed outright (SIGKILL) is a dropped connection: the command does not outlive it.
            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
            if os.getppid() != agent:  # it already was
                os._exit(255)
            for s in SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            os.chdir(env["HOME"])
            if "n" in options:  # -n: stdin from /dev/null
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.execvpe(argv[0], argv, env)
        except BaseException as e:
            print(f"ssh: {argv[0]}: {e}", file=sys.stderr)
        os._exit(127)
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        _, status = os.waitpid(pid, 0)
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    except HangUp as e:
        end(pid)
        signal.signal(e.args[0], signal.SIG_DFL)
        os.kill(os.getpid(), e.args[0])
        sys.exit(128 + e.args[0])
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv[1:])
'''
