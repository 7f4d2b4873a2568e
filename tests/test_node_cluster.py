"""The `nodes` fixture itself: namespaces, hostnames, network, pinning, the ssh agent, Slurm and mpirun across
the nodes, the fault helpers, and a second cluster's bring-up and tear-down beside the first."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from node_cluster import NodeCluster

pytestmark = pytest.mark.slow

# python -c CONNECT HOST PORT TIMEOUT [BYTES]: prints "connected" or "failed <error>".
CONNECT = """import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.sendall(b"x" * int(sys.argv[4] if len(sys.argv) > 4 else 0))
    print("connected")
except OSError as e:
    print("failed", type(e).__name__, e)
"""
# Accepts connections one after the other and reads each to its end; prints the port first.
LISTEN = """import socket
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c = s.accept()[0]
    while c.recv(1 << 16):
        pass
    c.close()
"""


@pytest.fixture(scope="module")
def port(nodes):
    """A listener on node2; its port."""
    proc = nodes.popen("node2", [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def connect(nodes, node, host, port, timeout=2, size=0):
    return nodes.on(node, sys.executable, "-c", CONNECT, host, str(port), str(timeout), str(size)).stdout.strip()


def sleepers(nodes, node, marker):
    """Pids on the node whose command line is `sleep <marker>`."""
    found = []
    for pid in nodes.pids(node):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                found.append(pid)
        except OSError:
            pass
    return found


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_each_node_has_its_hostname_tmpdir_and_core(nodes):
    names, tmpdirs, cores = [], [], []
    for node in ("node1", "node2"):
        out = nodes.on(node, "sh", "-c", 'hostname; echo "$TMPDIR"; grep Cpus_allowed_list /proc/self/status')
        name, tmpdir, cpus = out.stdout.split("\n")[:3]
        names.append(name)
        tmpdirs.append(tmpdir)
        cores.append(cpus.split()[-1])
        assert tmpdir == str(nodes.root / "nodes" / node / "tmp")
    assert names == ["node1", "node2"]
    assert len(set(tmpdirs)) == 2
    ncpu = len(os.sched_getaffinity(0))
    assert all("," not in c and "-" not in c for c in cores), cores  # one core each
    if ncpu >= 2:
        assert cores[0] != cores[1]
    for node in ("node1", "node2"):  # one path, each node's own files
        nodes.on(node, "sh", "-c", f'hostname > {nodes.scratch}/mine', check=True)
    assert [nodes.on(n, "cat", f"{nodes.scratch}/mine").stdout for n in ("node1", "node2")] == ["node1\n", "node2\n"]
    assert not (nodes.scratch / "mine").exists()  # outside the nodes the path is empty
    assert subprocess.run([nodes.bin / "node-exec", "node2", "hostname"], capture_output=True,
                          text=True).stdout == "node2\n"


def test_node_addresses_and_interfaces(nodes):
    for iface, address in ((nodes.interface, nodes.address("node1")),
                           (nodes.unusable_interface, nodes.dummy_address("node1"))):
        assert f"inet {address}/24" in nodes.on("node1", "ip", "-o", "-4", "addr", "show", "dev", iface).stdout
    assert "default" not in nodes.on("node1", "ip", "route").stdout
    assert f"{nodes.address('node2')} node2\n" in nodes.on("node1", "cat", "/etc/hosts").stdout
    assert "hosts: files\n" in nodes.on("node1", "cat", "/etc/nsswitch.conf").stdout


def test_node1_reaches_node2_by_name_but_not_over_dummy0(nodes, port):
    assert connect(nodes, "node1", "node2", port) == "connected"
    start = time.monotonic()
    out = connect(nodes, "node1", nodes.dummy_address("node2"), port, timeout=1)
    assert out.startswith("failed TimeoutError"), out
    assert time.monotonic() - start < 10


def test_a_cut_link_drops_connections_and_traffic_is_counted(nodes, port):
    rx, tx = nodes.link_bytes("node2")
    assert connect(nodes, "node1", "node2", port, size=1_000_000) == "connected"
    rx2, tx2 = nodes.link_bytes("node2")
    assert tx2 - tx >= 1_000_000 and rx2 > rx  # tx: towards node2
    nodes.set_link("node2", False)
    try:
        assert connect(nodes, "node1", "node2", port, timeout=1).startswith("failed"), "link down but connected"
    finally:
        nodes.set_link("node2", True)
    assert connect(nodes, "node1", "node2", port) == "connected"


def test_ssh_agent_runs_commands_like_ssh(nodes):
    ssh = str(nodes.bin / "ssh")
    env = {**nodes.env, "NOT_PASSED": "1"}
    run = lambda *a, **kw: subprocess.run([ssh, *a], capture_output=True, text=True, env=env, timeout=30, **kw)  # noqa: E731
    assert run("-x", "-o", "StrictHostKeyChecking=no", "root@node2", "-p", "22", "-o", "BatchMode=yes",
               "hostname").stdout == "node2\n"
    assert run("node2", "exit", "3").returncode == 3
    out = run("node1", 'echo "${NOT_PASSED:-unset} $TMPDIR $(pwd)"').stdout.split()
    assert out == ["unset", str(nodes.root / "nodes" / "node1" / "tmp"), env["HOME"]]
    assert run("node1", "cat", input="through stdin").stdout == "through stdin"
    assert run("-n", "node1", "cat", input="not read").stdout == ""
    unknown = run("nowhere", "hostname")
    assert unknown.returncode == 255
    assert unknown.stderr == "ssh: Could not resolve hostname nowhere: Name or service not known\n"
    nodes.set_down("node2", True)
    try:
        start = time.monotonic()
        down = run("-o", "ConnectTimeout=1", "node2", "hostname")
        assert (down.returncode, down.stderr) == (255, "ssh: connect to host node2 port 22: Connection timed out\n")
        assert 1 <= time.monotonic() - start < 5
    finally:
        nodes.set_down("node2", False)


@pytest.mark.parametrize("how", ["SIGTERM to the agent", "SIGKILL to its parent"])
def test_ending_the_agent_ends_the_remote_command(nodes, how):
    marker = str(1000 + len(how))
    ssh = nodes.bin / "ssh"
    if how.startswith("SIGTERM"):
        proc = subprocess.Popen([ssh, "node2", "sleep", marker])
    else:  # "; true": the shell must stay the agent's parent, not exec it
        proc = subprocess.Popen(["sh", "-c", f"{ssh} node2 sleep {marker}; true"])
    try:
        assert wait_for(lambda: sleepers(nodes, "node2", marker)), "remote sleep never started"
        proc.send_signal(signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGKILL)
        assert wait_for(lambda: not sleepers(nodes, "node2", marker), timeout=8), "remote sleep survived"
    finally:
        proc.kill()
        proc.wait()


def test_sbatch_runs_a_step_on_both_nodes(nodes, tmp_path):
    (tmp_path / "job.sh").write_text("#!/bin/sh\nsrun hostname\n")
    job = nodes.run("--nodes=2", "--ntasks-per-node=1", "--output=job.out", tmp_path / "job.sh", cwd=tmp_path,
                    timeout=60)
    out = (tmp_path / "job.out").read_text()
    assert job.ok, (job, out, nodes.logs())
    assert sorted(out.split()) == ["node1", "node2"]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI not installed")
def test_mpirun_across_the_nodes_with_the_agent(nodes):
    proc = nodes.on("node1", "mpirun", "--allow-run-as-root", "-np", "2", "-H", "node1:1,node2:1",
                     "--mca", "plm_rsh_agent", nodes.bin / "ssh", "--mca", "btl", "self,tcp",
                     "--mca", "btl_tcp_if_include", nodes.interface, "--mca", "oob_tcp_if_include", nodes.interface,
                     "hostname", env={**nodes.env, "PATH": f"{nodes.env.get('PATH', '')}:/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["node1", "node2"]


def test_kill_node_leaves_only_slurmd(nodes):
    sleeper = nodes.popen("node1", ["sleep", "1000"])
    agent = subprocess.Popen([nodes.bin / "ssh", "node1", "sleep 1000 & sleep 1000"])
    try:
        assert wait_for(lambda: len(sleepers(nodes, "node1", "1000")) == 3)
        slurmd = nodes.slurmd_pid("node1")
        killed = nodes.kill_node("node1")
        assert slurmd not in killed and len(killed) >= 3
        assert nodes.pids("node1") == [slurmd]
        assert nodes.pids("node1", include_daemons=False) == []
    finally:
        for p in (sleeper, agent):
            p.kill()
            p.wait()
    assert nodes.on("node1", "hostname").stdout == "node1\n"  # the node is usable again


def test_a_second_cluster_comes_up_beside_and_leaves_nothing(nodes):
    other = NodeCluster(tempfile.mkdtemp(prefix="hpctrain-nodes-"), names=["a1", "a2"])
    try:
        start = time.monotonic()
        other.start()
        up = time.monotonic() - start
        assert other.tag != nodes.tag and other.subnet != nodes.subnet
        assert other.on("a2", "hostname").stdout == "a2\n"
        assert connect(other, "a1", "a2", 9, timeout=1).startswith("failed ConnectionRefusedError")
        assert connect(other, "a1", nodes.address("node2"), 9, timeout=1).startswith("failed OSError")  # no route
        assert up < 10, up
    finally:
        start = time.monotonic()
        other.stop()
        down = time.monotonic() - start
    assert down < 15, down
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert other.tag not in netns and f"hpc{other.tag}" not in links
    assert not other.root.exists()
    assert nodes.on("node1", "hostname").stdout == "node1\n"  # the first cluster is untouched
