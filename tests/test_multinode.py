"""Training across two nodes of the test cluster (tests/node_cluster.py: network namespaces, one core each,
an ssh-like agent): `launch --hosts` for every launcher, what the ranks sent over the nodes' links, and what
ends the job when a node, its link or a rank fails. The Slurm side: test_multinode_slurm.py."""
import json
import os
import time

import numpy as np
import pytest

from node_cluster import FAULTS, fault_run

from conftest import VENV_BIN, write_job

pytestmark = pytest.mark.slow

HOSTS = "node1:1,node2:1"
LAUNCHERS = [("horovod", "mpirun"), ("horovod", "horovodrun"), ("multiworker", "local")]


def lenet(tmp_path, mnist_h5, name="lenet", steps=10, epochs=2, **distribute):
    return write_job(
        tmp_path / f"{name}.toml", name=name, data={"path": str(mnist_h5), "split": "holdout"},
        model={"name": "lenet5"},
        train={"optimizer": "adam", "learning_rate": 1e-3, "batch_size": 16, "epochs": epochs,
               "steps_per_epoch": steps, "validation": False, "deterministic": True, "seed": 7},
        distribute={"lr_scaling": "none", "sync_every": 5, **distribute},
        output={"dir": str(tmp_path / name), "tensorboard": False})


def env_of(nodes):
    return {**nodes.env, "PATH": f"{nodes.bin}{os.pathsep}{VENV_BIN}{os.pathsep}{nodes.env['PATH']}"}


def launch(nodes, *args, timeout=300, extra=None):
    """`hpctrain launch ARGS` run on node1, as a user logged in there would."""
    return nodes.on("node1", VENV_BIN / "hpctrain", "launch", *args, env={**env_of(nodes), **(extra or {})},
                    timeout=timeout)


def timing(run_dir):
    return json.loads((run_dir / "timing.json").read_text())


def final_weights(run_dir):
    from hpctrain.evaluate.run import load_model

    return load_model(run_dir)[1].get_weights()


@pytest.mark.parametrize("backend,launcher", LAUNCHERS)
def test_launch_on_two_hosts_trains_over_the_nodes_link(nodes, mnist_h5, tmp_path, backend, launcher):
    """Each rank on its own node, talking over eth0 (every node also has dummy0, which goes nowhere): the
    run records each rank's host, and node2's link carried at least the gradients of every step."""
    job = lenet(tmp_path, mnist_h5)
    before = nodes.link_bytes("node2")
    proc = launch(nodes, job, "--hosts", HOSTS, "--backend", backend, "--launcher", launcher,
                  "--set", f"distribute.interface={nodes.interface}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    received, sent = (a - b for a, b in zip(nodes.link_bytes("node2"), before))
    t = timing(tmp_path / "lenet")
    assert t["environment"]["rank_hosts"] == ["node1", "node2"] and t["nodes"] == 2
    gradients = t["parameters"] * 4 * len(t["step_times"])  # float32, every step: a 2-rank ring sends it each way
    assert received >= gradients and sent >= gradients, (received, sent, gradients)


@pytest.fixture(autouse=True)
def _nothing_left_on_the_nodes(nodes):  # every test of this module starts its own job on the nodes
    """After each test no process of it is left on a node (a failed test's job is ended here)."""
    yield
    settle = time.monotonic() + 5  # Slurm's step daemon ends a moment after its srun
    while any(nodes.pids(n, include_daemons=False) for n in nodes.names) and time.monotonic() < settle:
        time.sleep(0.1)
    leftovers = {node: nodes.kill_node(node) for node in nodes.names}
    assert not any(leftovers.values()), f"processes left on the nodes: {leftovers}"


def test_two_nodes_give_the_weights_of_one_node_with_two_workers(nodes, mnist_h5, tmp_path):
    """Without distribute.interface: the job takes eth0, where the node names resolve (not dummy0)."""
    one_node = lenet(tmp_path, mnist_h5, "one_node")
    two_nodes = lenet(tmp_path, mnist_h5, "two_nodes")
    for job, hosts in ((one_node, "node1:2"), (two_nodes, HOSTS)):
        proc = launch(nodes, job, "--hosts", hosts, "--backend", "horovod")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("network interface eth0, the one the host names resolve to" in proc.stdout) == (hosts == HOSTS)
    assert timing(tmp_path / "one_node")["environment"]["rank_hosts"] == ["node1", "node1"]
    assert timing(tmp_path / "two_nodes")["environment"]["rank_hosts"] == ["node1", "node2"]
    for a, b in zip(final_weights(tmp_path / "one_node"), final_weights(tmp_path / "two_nodes")):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # as the single-node equivalence tests


def test_launch_hosts_bad_input_is_one_line_and_starts_nothing(nodes, mnist_h5, tmp_path):
    job = lenet(tmp_path, mnist_h5)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node1 slots=1\nnode2 slots=one\n")
    cases = [(["--hosts", "node1:1,node9:1"], "host node9 cannot be reached: ssh: Could not resolve hostname node9"),
             (["--hostfile", hostfile], "line 2: expected 'HOST slots=N', not 'node2 slots=one'"),
             (["--hosts", HOSTS, "-n", "3"], "3 workers do not fit the 2 slots of node1:1,node2:1"),
             (["--hosts", HOSTS, "--set", "distribute.interface=ib0"], "host node1: interface ib0 not found on node1"),
             (["--hosts", HOSTS, "--backend", "mirrored"], "backend 'mirrored' runs as one process on one node")]
    for args, fragment in cases:
        proc = launch(nodes, job, "--backend", "horovod", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, proc.stderr)
    assert not (tmp_path / "lenet").exists()


def test_a_node_that_does_not_answer_is_named_before_anything_starts(nodes, mnist_h5, tmp_path):
    nodes.set_down("node2")  # its agent hangs, as ssh to a host that is down
    try:
        start = time.monotonic()
        proc = launch(nodes, lenet(tmp_path, mnist_h5), "--hosts", HOSTS, "--backend", "horovod",
                      extra={"HPCTRAIN_CONNECT_TIMEOUT": "5"})
        took = time.monotonic() - start
    finally:
        nodes.set_down("node2", False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "host node2 did not answer within 5 s" in lines[0], proc.stderr
    assert took < 30
    assert not (tmp_path / "lenet").exists()


def test_a_node_whose_network_is_down_is_named_before_anything_starts(nodes, mnist_h5, tmp_path):
    """node2 answers through the agent, but cannot reach node1: mpirun's daemon and the rank would hang."""
    nodes.set_link("node2", False)
    try:
        start = time.monotonic()
        proc = launch(nodes, lenet(tmp_path, mnist_h5), "--hosts", HOSTS, "--backend", "horovod")
        took = time.monotonic() - start
    finally:
        nodes.set_link("node2", True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"host node2 cannot connect back to node1 ({nodes.address('node1')}:" in lines[0], lines[0]
    assert lines[0].endswith(("timed out", "No route to host")), lines[0]  # as the kernel's neighbour cache has it
    assert took < 30 and not (tmp_path / "lenet").exists()


def test_two_nodes_with_two_workers_each(nodes, mnist_h5, tmp_path):
    """Oversubscribed (one core per node): shared memory inside a node, TCP between them."""
    proc = launch(nodes, lenet(tmp_path, mnist_h5, steps=4), "--hosts", "node1:2,node2:2", "--backend", "horovod")
    assert proc.returncode == 0, proc.stderr[-3000:]
    t = timing(tmp_path / "lenet")
    assert t["environment"]["rank_hosts"] == ["node1", "node1", "node2", "node2"] and t["world_size"] == 4


# The job must end, not hang: a generous bound (benchmarks/faults_multinode.py measures how fast it ends).
STALL = 15
ENDS_WITHIN = 180


SRUN = ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mpi=pmix", "--kill-on-bad-exit=1"]


@pytest.mark.parametrize("backend, collective", [("horovod", "Horovod over MPI"),
                                                 ("multiworker", "MultiWorkerMirroredStrategy, RING collective")])
def test_bench_allreduce_under_srun_times_the_two_nodes(nodes, mnist_h5, tmp_path, backend, collective):
    out = tmp_path / "allreduce.json"
    proc = nodes.on("node1", *SRUN, VENV_BIN / "hpctrain", "bench", "allreduce", lenet(tmp_path, mnist_h5),
                    "--backend", backend, "-b", 4, "-e", "64K", "-f", 128, "--repeats", 1, "-o", out,
                    env={**env_of(nodes), "HPCTRAIN_INTERFACE": nodes.interface}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["collective"], result["workers"]) == (collective, 2)
    assert [r["bytes"] for r in result["rows"]] == [4, 512, 64 << 10] and all(r["time_s"] > 0 for r in result["rows"])
    assert proc.stdout.count("| gradient set |") == 1  # rank 0 alone prints the table


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("backend,launcher", [*LAUNCHERS, ("horovod", "srun")])
def test_a_fault_on_node2_ends_the_whole_job_naming_it(nodes, mnist_h5, tmp_path, backend, launcher, fault):
    job = lenet(tmp_path, mnist_h5, steps=20, epochs=1000, stall_timeout=STALL)
    if launcher == "srun":
        argv = [*SRUN, VENV_BIN / "hpctrain", "train", job, "--backend", backend]
    else:
        argv = [VENV_BIN / "hpctrain", "launch", job, "--hosts", HOSTS, "--backend", backend, "--launcher", launcher]
    out = fault_run(nodes, argv, {**env_of(nodes), "HPCTRAIN_INTERFACE": nodes.interface}, tmp_path / "lenet", fault)
    print(f"\n=== {backend} {launcher} {fault}: code {out.code} after {out.seconds:.1f} s, left {out.leftovers}")
    print("\n".join(line for line in out.stderr.splitlines() if "Epoch" not in line and "ms/step" not in line)[-4000:])
    assert out.code not in (None, 0), out.stderr[-3000:]
    assert out.seconds <= ENDS_WITHIN, out.seconds
    if launcher == "srun" and fault == "link cut":  # Slurm's step daemon waits for the link; the ranks are gone
        out.leftovers["node2"] = [p for p in out.leftovers["node2"] if not p.split()[1].startswith("slurmstepd")]
    assert out.leftovers == {"node1": [], "node2": []}
    # A line names the node: hpctrain's (launcher, watchdog, a rank's error) or, for mpirun, Open MPI's.
    named = [line for line in out.stderr.splitlines() if "hpctrain" in line and "node2" in line
             or line.strip().startswith("Peer host:") and line.split()[-1] == "node2"
             or line.startswith("srun: error: node2:")]
    assert named, out.stderr[-3000:]
