"""The Slurm templates and `hpctrain submit` on a real (private, single-node) Slurm cluster: real sbatch,
srun --mpi=pmix, mpirun, requeue. Every job is submitted at the start (module fixture `jobs`) so that they run
side by side; each test then waits for its own."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, VENV_BIN, assert_user_error, run_hpctrain, write_job

SLURM = ROOT / "slurm"  # the path sbatch users type: a symlink to the package's templates
HOSTILE = """x" ; touch PWNED ; echo "$(touch PWNED) `touch PWNED` 'q' ;"""
WAIT = 420  # seconds a job may take on a loaded 2-core machine


def tiny_job(path, mnist_h5, out, **train):
    return write_job(
        path, name="tiny",
        data={"path": str(mnist_h5), "split": "holdout"},
        model={"name": "lenet5"},
        train={"batch_size": 16, "epochs": 2, "steps_per_epoch": 5, "validation": False, "deterministic": True,
               "seed": 7, **train},
        distribute={"lr_scaling": "none", "sync_every": 5},
        output={"dir": str(out), "tensorboard": False})


def job_env(slurm):
    return {**slurm.env, "PATH": f"{VENV_BIN}{os.pathsep}{slurm.env.get('PATH', '')}"}


def output_of(folder, job_id):
    """The job's output file (%x-%j.out, whatever the job name)."""
    [path] = [p for p in folder.iterdir() if p.name.endswith(f"-{job_id}.out")]
    return path.read_text(errors="replace")


# Template, sbatch options, extra hpctrain arguments, expected workers and launcher in timing.json.
TEMPLATES = {
    "horovod-srun": (["--gpus-per-node=2", "--cpus-per-task=2"], [], 2, "slurm"),
    "horovod-mpirun": (["--ntasks=2", "--cpus-per-task=1"], [], 2, "mpirun"),
    "multiworker": (["--ntasks-per-node=2", "--cpus-per-task=1"], [], 2, "slurm"),
    "mirrored": (["--gres=gpu:2", "--cpus-per-task=1"], ["--set", "distribute.devices=2"], 2, "single"),
}
REQUEUE_SETTINGS = dict(epochs=3, steps_per_epoch=60)


@pytest.fixture(scope="module")
def jobs(slurm, mnist_h5, tmp_path_factory):
    """Submits every job of this module at once; returns {name: (job id, folder, ...)}."""
    env = job_env(slurm)
    submitted = {}
    # One job per template, each in a folder of its own.
    for name, (options, extra, _, _) in TEMPLATES.items():
        d = tmp_path_factory.mktemp(name)
        spec = tiny_job(d / "job.toml", mnist_h5, d / "run")
        staged = {"HPCTRAIN_STAGE_DIR": str(d / "node-local")} if name == "horovod-srun" else {}
        submitted[name] = (slurm.sbatch(*options, SLURM / f"{name}.sbatch", spec, *extra, cwd=d,
                                        env={**env, **staged}), d)
    # The environments hpctrain starts in: batch script, srun step, mpirun inside the allocation.
    d = tmp_path_factory.mktemp("environments")
    (d / "envs.sh").write_text("#!/bin/bash\nenv -0 > batch.env\n"
                               "srun --mpi=pmix bash -c 'env -0 > step.$SLURM_PROCID.env'\n"
                               "mpirun --allow-run-as-root -np 2 bash -c 'env -0 > mpirun.$OMPI_COMM_WORLD_RANK.env'\n")
    submitted["environments"] = (slurm.sbatch("--ntasks=2", "--cpus-per-task=1", "--output=envs.out", d / "envs.sh",
                                              cwd=d, env=env), d)
    # The uninterrupted twin of the requeue test's run.
    d = tmp_path_factory.mktemp("straight")
    spec = tiny_job(d / "job.toml", mnist_h5, d / "run", **REQUEUE_SETTINGS)
    submitted["straight"] = (slurm.sbatch("--ntasks-per-node=2", "--cpus-per-task=1", SLURM / "horovod-srun.sbatch",
                                          spec, cwd=d, env=env), d)
    # Hostile names everywhere: job name, spec path, template folder, stage dir, run folder.
    d = tmp_path_factory.mktemp("hostile")
    cwd = d / "cwd"
    cwd.mkdir()
    spec_dir = d / f"spec dir {HOSTILE}"
    spec_dir.mkdir()
    templates = d / f"templates {HOSTILE}"
    templates.mkdir()
    for f in ("common.sh", "site.env", "mirrored.sbatch"):
        shutil.copy(SLURM / f, templates / f)
    run_dir = d / f"run {HOSTILE}"
    spec = tiny_job(spec_dir / f"job {HOSTILE}.toml", mnist_h5, d / "unused")
    stage = f"/tmp/stage {HOSTILE}"
    # A stand-in for apptainer: records its arguments, then runs the command it was given.
    bin_dir = d / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(
        '#!/bin/bash\nprintf \'%s\\0\' "$@" >> "$APPTAINER_LOG"; printf \'\\n\' >> "$APPTAINER_LOG"\n'
        '[ "$1 $2" = "exec --nv" ] || exit 99\nshift 3\nexec "$@"\n')
    (bin_dir / "apptainer").chmod(0o755)
    hostile_env = {**env, "HPCTRAIN_STAGE_DIR": stage, "HPCTRAIN_IMAGE": f"/images/{HOSTILE}.sif",
                   "APPTAINER_LOG": str(d / "apptainer.log"), "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    hostile_env.pop("HPCTRAIN_SLURM_DIR", None)  # the template finds common.sh through Slurm
    job_id = slurm.sbatch(f"--job-name={HOSTILE}", "--cpus-per-task=1", templates / "mirrored.sbatch", spec,
                          "--set", f"output.dir={json.dumps(str(run_dir))}", "--dry-run", cwd=cwd, env=hostile_env)
    submitted["hostile"] = (job_id, cwd, run_dir, stage, d)
    # A sweep through `hpctrain submit`.
    d = tmp_path_factory.mktemp("sweep")
    spec = tiny_job(d / "job.toml", mnist_h5, d / "unused")
    proc = run_hpctrain("submit", spec, "--gpus", "1,2", "--cpus-per-task", 1, "-o", d / "sweep", env=slurm.env,
                        cwd=d, check=True)
    submitted["sweep"] = (proc, d / "sweep")
    return submitted


@pytest.mark.slow
def test_requeue_after_the_warning_signal_resumes_to_the_same_weights(slurm, jobs, mnist_h5, tmp_path):
    """USR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit) mid-training: the ranks
    checkpoint and exit 75, the job requeues itself and resumes; the weights equal an uninterrupted run."""
    from hpctrain.evaluate.run import load_model

    spec = tiny_job(tmp_path / "job.toml", mnist_h5, tmp_path / "run", **REQUEUE_SETTINGS)
    job_id = slurm.sbatch("--ntasks-per-node=2", "--cpus-per-task=1", SLURM / "horovod-srun.sbatch", spec,
                          cwd=tmp_path, env=job_env(slurm))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline, polls = time.monotonic() + WAIT, 0
    while not metrics.exists() and time.monotonic() < deadline:
        polls += 1
        if polls % 40 == 0:  # every 2 s: the job must not have ended already
            assert slurm.job(job_id).state in ("PENDING", "RUNNING", "CONFIGURING"), output_of(tmp_path, job_id)
        time.sleep(0.05)
    assert metrics.exists(), "epoch 1 never ended"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm.env, check=True)

    job = slurm.wait(job_id, WAIT)
    log = output_of(tmp_path, job_id)
    assert job.ok and job.restarts == 1, (job, log)
    for line in ("got SIGUSR1", "stopped by signal", "step exited with code 75", f"requeueing job {job_id}",
                 "(template horovod-srun, restart 1)", "resuming from", "step exited with code 0"):
        assert line in log, (line, log)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]

    straight_id, straight = jobs["straight"]
    assert slurm.wait(straight_id, WAIT).ok, output_of(straight, straight_id)
    a, b = (load_model(d / "run")[1].get_weights() for d in (straight, tmp_path))
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_cluster_detection_in_real_slurm_environments(slurm, jobs):
    """What srun sets in a step (SLURM_STEP_ID, SLURM_STEP_*) and the batch script lacks, as measured."""
    from hpctrain.distribute import cluster

    job_id, d = jobs["environments"]
    assert slurm.wait(job_id, WAIT).ok, (d / "envs.out").read_text()

    def env(name):
        return dict(item.split("=", 1) for item in (d / name).read_text().split("\0") if "=" in item)

    batch = env("batch.env")
    assert "SLURM_STEP_ID" not in batch and batch["SLURM_PROCID"] == "0" and batch["SLURM_NTASKS"] == "2"
    assert cluster.detect(batch) == cluster.Cluster("single", job_id=job_id)
    for rank in (0, 1):
        step = cluster.detect(env(f"step.{rank}.env"))
        assert (step.launcher, step.rank, step.size, step.local_rank, step.local_size, step.node_rank,
                step.num_nodes, step.job_id, step.hosts) == ("slurm", rank, 2, rank, 2, 0, 1, job_id, (slurm.host,))
        config = json.loads(cluster.slurm_tf_config(step, env(f"step.{rank}.env")))
        assert len(config["cluster"]["worker"]) == 2 and config["task"]["index"] == rank
        ranked = cluster.detect(env(f"mpirun.{rank}.env"))  # mpirun's ranks keep the batch script's SLURM_*
        assert (ranked.launcher, ranked.rank, ranked.size, ranked.job_id) == ("mpirun", rank, 2, job_id)


@pytest.mark.slow
@pytest.mark.parametrize("template", TEMPLATES)
def test_template_trains_and_logs_header_and_end(slurm, jobs, template):
    job_id, folder = jobs[template]
    job = slurm.wait(job_id, WAIT)
    log = output_of(folder, job_id)
    assert job.ok, (job, log)
    assert f'=== hpctrain: job {job_id} "hpctrain-{template.split("-")[0]}' in log
    assert f"(template {template}, restart 0)" in log
    assert "tensorflow:" in log and "version: 2.18.1" in log  # hpctrain env
    assert "Epoch 2/2" in log and "step exited with code 0" in log
    timing = json.loads((folder / "run" / "timing.json").read_text())
    _, _, workers, launcher = TEMPLATES[template]
    assert timing["world_size"] == workers and timing["environment"]["launcher"] == launcher
    if template in ("horovod-srun", "mirrored"):  # fake GPUs: Slurm sets the variables, TensorFlow finds none
        assert re.search(r"GPUs on this node 2 \(CUDA_VISIBLE_DEVICES=\d+,\d+\)", log), log
    if template == "horovod-srun":
        assert "one task per GPU: 2 tasks per node" in log
        assert (folder / "node-local" / "mnist.h5").is_file()  # HPCTRAIN_STAGE_DIR -> --set data.stage_dir


@pytest.mark.slow
def test_hostile_names_reach_hpctrain_as_data(slurm, jobs):
    job_id, cwd, run_dir, stage, root = jobs["hostile"]
    job = slurm.wait(job_id, WAIT)
    log = output_of(cwd, job_id)
    assert job.ok, (job, log)
    assert f'job {job_id} "{HOSTILE}"' in log  # the job name, printed as is
    spec = tomllib.loads(log[log.index('name = "tiny"'):log.index("=== hpctrain: step exited")])  # the --dry-run spec
    assert spec["data"]["stage_dir"] == stage and spec["output"]["dir"] == str(run_dir)
    # Both hpctrain commands (env, train) ran in the image, the arguments intact.
    calls = [c.split("\0") for c in (root / "apptainer.log").read_text().split("\0\n") if c]
    image = f"/images/{HOSTILE}.sif"
    assert [c[:5] for c in calls] == [["exec", "--nv", image, "hpctrain", sub] for sub in ("env", "train")]
    assert f"output.dir={json.dumps(str(run_dir))}" in calls[1]
    assert not list(root.rglob("PWNED")) and not (ROOT / "PWNED").exists()
    assert not list(slurm.root.rglob("PWNED"))


@pytest.mark.slow
def test_submit_sweep_ends_with_the_report(slurm, jobs, tmp_path):
    proc, sweep = jobs["sweep"]
    record = json.loads((sweep / "sweep.json").read_text())
    ids = [r["job_id"] for r in record["runs"]]
    report_id = record["report"]["job_id"]
    assert f"report: job {report_id}" in proc.stdout and str(sweep / "report" / "report.md") in proc.stdout
    assert "--dependency=afterany:" + ":".join(ids) in record["report"]["command"]
    job = slurm.wait(report_id, WAIT)
    logs = {p.name: p.read_text(errors="replace") for p in (sweep / "logs").iterdir()}
    assert job.ok, (job, logs)
    for i in ids:
        assert slurm.wait(i, 30).ok
    report = (sweep / "report" / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) >= 2, report
    assert "Runs without results" not in report
    assert sorted(json.loads((sweep / f"w{n}" / "timing.json").read_text())["world_size"] for n in (1, 2)) == [1, 2]
    [report_log] = [text for name, text in logs.items() if name.startswith(f"tiny-report-{report_id}")]
    for i in ids:  # how each training job ended, as far as Slurm still knows (MinJobAge)
        assert re.search(rf"training job {i}: (JobState=COMPLETED ExitCode=0:0|ended)", report_log), report_log

    # A run that left nothing is named, not fatal.
    out = tmp_path / "report"
    proc = run_hpctrain("report", "--allow-missing", sweep / "w1", tmp_path / "w4", "-o", out, check=True)
    assert "note: 1 of 2 runs have no timing.json" in proc.stderr
    text = (out / "report.md").read_text()
    assert "Runs without results" in text and str(tmp_path / "w4") in text and "| 1 |" in text
    assert run_hpctrain("report", "--allow-missing", tmp_path / "w4", "-o", out).returncode == 1


@pytest.mark.slow
def test_impossible_requests_are_one_line_errors(slurm, mnist_h5, tmp_path):
    spec = tiny_job(tmp_path / "job.toml", mnist_h5, tmp_path / "unused")
    proc = run_hpctrain("submit", spec, "--gpus", "1,9", "--cpus-per-task", 1, "-o", tmp_path / "a", env=slurm.env)
    assert_user_error(proc, "sbatch refused the 9-worker job", "Requested node configuration is not available",
                      "cancelled the jobs already queued")
    cancelled = proc.stderr.rsplit(": ", 1)[1].strip().rstrip(")")
    assert slurm.wait(cancelled, 60).state == "CANCELLED"

    proc = run_hpctrain("submit", spec, "--gpus", "5", "--nodes", 5, "--cpus-per-task", 1, "-o", tmp_path / "b",
                        env=slurm.env)
    assert_user_error(proc, "sbatch refused the 5-worker job", "Node count specification invalid")
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "1,2", "--nodes", 5, env=slurm.env),
                      "does not spread evenly over --nodes 5")
    no_slurm = {"PATH": str(VENV_BIN)}
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "1", "-o", tmp_path / "c", env=no_slurm),
                      "sbatch not found")


@pytest.mark.slow
def test_dry_run_prints_commands_that_split_back_to_the_arguments(tmp_path, mnist_h5):
    sweep = tmp_path / f"sweep {HOSTILE}"
    spec = tiny_job(tmp_path / "job.toml", mnist_h5, tmp_path / "unused")
    proc = run_hpctrain("submit", spec, "--gpus", "1,2,4,8", "--gpus-per-node", 4, "--time", "00:10:00",
                        "--dry-run", "-o", sweep, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# hpctrain submit --dry-run: 4 training jobs")
    commands = [shlex.split(line) for line in lines[1:]]
    assert [c[0] for c in commands] == ["sbatch"] * 5
    eight = commands[3]
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--time=00:10:00"} <= set(eight)
    assert f"output.dir={json.dumps(str(sweep / 'w8'))}" in eight
    report = commands[4]
    assert report[report.index("-o") + 1] == str(sweep / "report")
    assert report[-4:] == [str(sweep / f"w{n}") for n in (1, 2, 4, 8)]
    assert not sweep.exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend,n,per,cpu,expected", [
    ("horovod", 8, 4, False, (2, 4, 4)),      # one task per GPU, 2 nodes
    ("horovod", 2, 4, False, (1, 2, 2)),
    ("horovod", 4, 4, True, (1, 4, 0)),       # CPU workers
    ("multiworker", 8, 4, False, (2, 1, 4)),  # one process per node drives its GPUs
    ("multiworker", 2, 2, True, (1, 2, 0)),
    ("mirrored", 4, 4, False, (1, 1, 4)),
])
def test_layout_of_workers_on_nodes(backend, n, per, cpu, expected):
    from hpctrain.launch.slurm import layout

    lay = layout(backend, n, per, cpu)
    assert (lay.nodes, lay.tasks_per_node, lay.gpus_per_node) == expected


@pytest.mark.slow
def test_layout_and_template_mistakes_are_user_errors(tmp_path, mnist_h5):
    spec = tiny_job(tmp_path / "job.toml", mnist_h5, tmp_path / "unused")
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "8", "--backend", "mirrored", "--gpus-per-node", 4,
                                   "--dry-run"), "mirrored runs on one node")
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "5", "--gpus-per-node", 4, "--dry-run"),
                      "5 workers do not split evenly over 2 nodes")
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "2", "--backend", "mirrored", "--template",
                                   "horovod-mpirun", "--dry-run"), "runs backend horovod, not mirrored")
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "2", "--template", "nope", "--dry-run"),
                      "template 'nope' not found", "horovod-srun")
    assert_user_error(run_hpctrain("submit", spec, "--gpus", "0,x", "--dry-run"), "--gpus takes worker counts")


# What hpctrain ships in hpctrain/launch/templates: every template, the shared bash and the site file.
PACKAGE_FILES = ("common.sh", "site.env", *(f"{t}.sbatch" for t in TEMPLATES), "report.sbatch")


def template_files(folder):
    return sorted({p.name for p in folder.glob("*.sbatch")} | {"common.sh", "site.env"})


def test_slurm_folder_is_a_symlink_to_the_package_templates():
    """slurm/ in a checkout is a relative symlink in git (mode 120000), so `sbatch slurm/x.sbatch` runs the files
    that `hpctrain submit` uses."""
    from hpctrain.launch.slurm import templates_dir

    entry = subprocess.run(["git", "ls-files", "-s", "slurm"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert entry[0] == "120000" and entry[-1] == "slurm", entry
    assert os.readlink(SLURM) == "src/hpctrain/launch/templates"
    assert SLURM.resolve() == templates_dir({}) == ROOT / "src" / "hpctrain" / "launch" / "templates"
    assert set(PACKAGE_FILES) <= set(template_files(SLURM))
    for name in template_files(SLURM):
        assert (SLURM / name).is_file() and (SLURM / name).resolve() == templates_dir({}) / name


def test_wheel_ships_the_templates_where_templates_dir_finds_them(tmp_path):
    # Built from a clean copy: the checkout's own build/ and *.egg-info would put stale files into the wheel.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ROOT.iterdir():
        if f.is_file():
            shutil.copy(f, tree / f.name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", tmp_path / "dist", tree], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [wheel] = (tmp_path / "dist").glob("hpctrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in template_files(SLURM) if f"hpctrain/launch/templates/{n}" not in names]
    assert not missing, (missing, sorted(names))

    site = tmp_path / "site"  # the wheel unpacked as an installer would (pure Python: files as they are)
    zipfile.ZipFile(wheel).extractall(site)
    proc = subprocess.run([sys.executable, "-c", "from hpctrain.launch.slurm import templates_dir; "
                           "print(templates_dir({}))"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)}, check=True)
    found = Path(proc.stdout.strip())
    assert found == site / "hpctrain" / "launch" / "templates"
    assert template_files(found) == template_files(SLURM)
    for name in PACKAGE_FILES:
        assert (found / name).read_bytes() == (SLURM / name).read_bytes()
