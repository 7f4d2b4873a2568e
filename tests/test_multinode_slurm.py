"""Slurm across the two nodes of the test cluster (tests/node_cluster.py): every training template,
`hpctrain submit` from 1 to 2 nodes, staging to node-local storage, and a requeue with its exact resume.
Submitted together at the start (module fixture `jobs`), each test waits for its own."""
import json
import subprocess
import time

import numpy as np
import pytest

from test_multinode import env_of, final_weights, lenet, timing

from conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.slow

SLURM = ROOT / "slurm"
WAIT = 420
TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"]
LONG = dict(steps=60, epochs=3)
TEMPLATES = {"horovod-srun": TWO_NODES, "horovod-mpirun": TWO_NODES, "multiworker": TWO_NODES,
             "mirrored": ["--nodes=1", "--cpus-per-task=1"]}


def output_of(folder, job_id):
    [path] = [p for p in folder.iterdir() if p.name.endswith(f"-{job_id}.out")]
    return path.read_text(errors="replace")


@pytest.fixture(scope="module")
def jobs(nodes, mnist_h5, tmp_path_factory):
    # As a site's site.env would: without it, MPI tries dummy0 too, and the job hangs at its start.
    env, submitted = {**env_of(nodes), "HPCTRAIN_INTERFACE": nodes.interface}, {}
    for name, options in TEMPLATES.items():
        d = tmp_path_factory.mktemp(name)
        extra = ["--set", "distribute.devices=2"] if name == "mirrored" else []
        staged = {"HPCTRAIN_STAGE_DIR": str(nodes.scratch / "stage")} if name == "horovod-srun" else {}
        submitted[name] = (nodes.sbatch(*options, SLURM / f"{name}.sbatch", lenet(d, mnist_h5, "run"), *extra,
                                        cwd=d, env={**env, **staged}), d)
    d = tmp_path_factory.mktemp("straight")  # the requeue test's uninterrupted twin
    submitted["straight"] = (nodes.sbatch(*TWO_NODES, SLURM / "horovod-srun.sbatch", lenet(d, mnist_h5, "run", **LONG),
                                          cwd=d, env=env), d)
    submitted["env"] = env
    d = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run([VENV_BIN / "hpctrain", "submit", lenet(d, mnist_h5, "unused"), "--gpus", "1,2",
                           "--gpus-per-node", "1", "--cpu", "--cpus-per-task", "1", "-o", d / "sweep"],
                          env=env, cwd=d, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    submitted["sweep"] = (proc, d / "sweep")
    return submitted


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_trains_across_the_nodes(nodes, jobs, template):
    job_id, folder = jobs[template]
    job = nodes.wait(job_id, WAIT)
    log = output_of(folder, job_id)
    assert job.ok, (job, log[-3000:])
    t = timing(folder / "run")
    hosts = t["environment"]["rank_hosts"]
    if template == "mirrored":
        assert t["world_size"] == 2 and len(hosts) == 1 and hosts[0] in nodes.names
    else:
        assert t["world_size"] == 2 and hosts == ["node1", "node2"] and t["nodes"] == 2, hosts
    assert "nodes 2 (node[1-2])" in log or template == "mirrored", log[:2000]


def test_staging_gives_each_node_its_own_copy_once(nodes, jobs, mnist_h5):
    job_id, folder = jobs["horovod-srun"]
    assert nodes.wait(job_id, WAIT).ok, output_of(folder, job_id)[-3000:]
    for node in nodes.names:  # the one stage path is node-local: each node holds the file
        copy = nodes.nodes[node].local / "stage" / mnist_h5.name
        assert copy.is_file() and copy.stat().st_size == mnist_h5.stat().st_size
    assert not (nodes.scratch / "stage").exists()  # nothing on the shared file system


def test_submit_from_one_to_two_nodes_ends_with_the_report(nodes, jobs):
    proc, sweep = jobs["sweep"]
    record = json.loads((sweep / "sweep.json").read_text())
    job = nodes.wait(record["report"]["job_id"], WAIT)
    assert job.ok, [p.read_text(errors="replace")[-2000:] for p in (sweep / "logs").iterdir()]
    hosts = {n: timing(sweep / f"w{n}")["environment"]["rank_hosts"] for n in (1, 2)}
    assert len(hosts[1]) == 1 and hosts[2] == ["node1", "node2"], hosts
    report = (sweep / "report" / "report.md").read_text()
    assert any(line.startswith("| 2 |") for line in report.splitlines()), report


def test_requeue_across_two_nodes_resumes_to_the_same_weights(nodes, jobs, mnist_h5, tmp_path):
    """USR1 to the batch shell mid-training: both nodes' ranks checkpoint, the job requeues and resumes; its
    weights equal the uninterrupted twin's."""
    folder = tmp_path
    job_id = nodes.sbatch(*TWO_NODES, SLURM / "horovod-srun.sbatch", lenet(folder, mnist_h5, "run", **LONG),
                          cwd=folder, env=jobs["env"])
    metrics = folder / "run" / "metrics.jsonl"
    deadline = time.monotonic() + WAIT
    while not metrics.exists():
        assert time.monotonic() < deadline and nodes.job(job_id).state in ("PENDING", "RUNNING", "CONFIGURING"), \
            output_of(folder, job_id)[-3000:]
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=nodes.env, check=True)
    job = nodes.wait(job_id, WAIT)
    log = output_of(folder, job_id)
    assert job.ok and job.restarts == 1, (job, log[-3000:])
    assert "step exited with code 75" in log and "resuming from" in log
    straight_id, straight = jobs["straight"]
    assert nodes.wait(straight_id, WAIT).ok, output_of(straight, straight_id)[-3000:]
    for a, b in zip(final_weights(straight / "run"), final_weights(folder / "run")):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
