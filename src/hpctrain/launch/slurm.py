"""`hpctrain submit JOB.toml --gpus 1,2,4,8`: a scaling sweep on Slurm — the batch twin of `hpctrain scaling`.

One training job per worker count, each writing its own run folder (--set output.dir=SWEEP/w<N>), then a
report job queued with --dependency=afterany on all of them: it runs however they end and names the runs that
left no results, so a failed run never leaves it pending. Every job is an `sbatch --parsable` call from an
argument list (never a shell string) of a template in hpctrain/launch/templates (slurm/ in a checkout).

    SWEEP/sweep.json     what was submitted: job ids, sbatch commands, run folders
    SWEEP/logs/          the jobs' output files (%x-%j.out)
    SWEEP/w1, w2, ...    run folders
    SWEEP/report/        report.md, report.csv, report.json and plots, once the report job has run

Workers sit on nodes of `gpus_per_node` GPUs (default: every run on one node; --nodes N: the largest run
spans N nodes); each backend lays its workers out on them (`Backend.slurm_layout`). With `cpu` no GPUs are
requested and each worker is a CPU process.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hpctrain.atomic import write_text
from hpctrain.distribute import backends
from hpctrain.errors import UserError
from hpctrain.launch import sweep as sweep_mod

REPORT_TEMPLATE = "report"
SBATCH_TIMEOUT = 120  # seconds; sbatch normally answers at once


@dataclass
class Job:
    workers: int
    name: str
    run_dir: Path | None
    command: list
    job_id: str | None = None


def templates_dir(env=None):
    """The folder of the templates and common.sh: $HPCTRAIN_SLURM_DIR, else the package's own templates next to
    this module (hpctrain/launch/templates, package data of the wheel; slurm/ in a checkout links to it)."""
    env = os.environ if env is None else env
    if env.get("HPCTRAIN_SLURM_DIR"):
        return Path(env["HPCTRAIN_SLURM_DIR"]).resolve()
    return Path(__file__).resolve().parent / "templates"


def find_template(name, directory):
    """A template by name (horovod-srun) or path (my/site.sbatch)."""
    path = Path(name)
    candidates = [path] if path.suffix or len(path.parts) > 1 else []
    candidates += [directory / name, directory / f"{name}.sbatch"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    names = ", ".join(sorted(p.stem for p in directory.glob("*.sbatch"))) or "none"
    raise UserError(f"template {name!r} not found in {directory} (templates there: {names})")


def per_node(sizes, nodes=None, gpus_per_node=None):
    """Workers (GPUs) per node: given, or what lets the largest run span `nodes` nodes, or all on one."""
    if gpus_per_node is not None:
        if gpus_per_node < 1:
            raise UserError(f"--gpus-per-node must be at least 1, not {gpus_per_node}")
        return gpus_per_node
    if nodes is None:
        return max(sizes)
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, not {nodes}")
    if max(sizes) % nodes:
        raise UserError(f"the largest run ({max(sizes)} workers) does not spread evenly over --nodes {nodes}")
    return max(sizes) // nodes


def layout(backend, n, per, cpu=False):
    """Nodes, tasks and GPUs per node of an n-worker run of `backend` (a name) on nodes holding `per` workers."""
    return backends.BACKENDS[backend].slurm_layout(n, per, cpu)


def template_backends():
    """{template name: backend name} of every backend's templates."""
    return {t: name for name, b in backends.BACKENDS.items() for t in b.slurm_templates}


def _slurm_pattern(path):
    return str(path).replace("%", "%%")  # Slurm expands %j, %x... in --output


def plan(job_path, sizes, *, backend=None, nodes=None, gpus_per_node=None, cpu=False, template=None,
         output=None, overrides=(), cpus_per_task=None, partition=None, account=None, time_limit=None,
         sbatch_args=(), env=None, folds=None, seeds=None):
    """The sbatch commands of a sweep (training jobs, then the report job, whose --dependency is filled in
    at submission). The backend: --backend, else the spec's, else the first with Slurm templates."""
    default = next(name for name, b in backends.BACKENDS.items() if b.slurm_templates)
    sw = sweep_mod.plan(job_path, sizes, output, backend, overrides, default_backend=default, folds=folds, seeds=seeds)
    name = sw.backend.name
    directory = templates_dir(env)
    template_path = find_template(template or sw.backend.slurm_templates[0], directory)
    runs_backend = template_backends().get(template_path.stem, name)
    if runs_backend != name:
        raise UserError(f"template {template_path.stem} runs backend {runs_backend}, not {name}")
    report_template = find_template(REPORT_TEMPLATE, directory)
    per = per_node(sizes, nodes, gpus_per_node)
    logs = sw.folder / "logs"

    common = [f"--cpus-per-task={cpus_per_task}"] if cpus_per_task else []
    common += [f"--partition={partition}"] if partition else []
    common += [f"--account={account}"] if account else []
    jobs = []
    for r in sw.runs:
        lay = layout(name, r.workers, per, cpu)
        job_name = f"{sw.spec.name}-w{r.workers}" + (f"-{r.repeat}" if r.repeat else "")
        cmd = ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={_slurm_pattern(logs)}/%x-%j.out",
               f"--nodes={lay.nodes}", f"--ntasks-per-node={lay.tasks_per_node}"]
        cmd += [f"--gpus-per-node={lay.gpus_per_node}"] if lay.gpus_per_node else []
        cmd += common + ([f"--time={time_limit}"] if time_limit else []) + list(sbatch_args)
        cmd += [str(template_path), *sw.train_args(r)[1:]]  # the template runs `hpctrain train` itself
        jobs.append(Job(r.workers, job_name, r.run_dir, cmd))
    report = Job(0, f"{sw.spec.name}-report", None,
                 ["sbatch", "--parsable", f"--job-name={sw.spec.name}-report",
                  f"--output={_slurm_pattern(logs)}/%x-%j.out", "--dependency=afterany:{ids}",
                  *[a for a in common if not a.startswith("--cpus-per-task")],
                  str(report_template), "-o", str(sw.folder / "report"), *(str(j.run_dir) for j in jobs)])
    return {"spec": sw.spec, "job_path": sw.job_path, "backend": name, "template": template_path, "sweep": sw.folder,
            "jobs": jobs, "report": report, "slurm_dir": common_dir(template_path, directory)}


def common_dir(template_path, directory):
    """Where the job finds common.sh: next to the template, else the templates folder."""
    return template_path.parent if (template_path.parent / "common.sh").is_file() else directory


def job_environment(slurm_dir, env=None):
    """Variables the jobs need on top of the caller's (sbatch passes the environment on): where common.sh
    is, and this hpctrain when the caller did not choose one (a venv need not be on PATH)."""
    env = os.environ if env is None else env
    extra = {"HPCTRAIN_SLURM_DIR": str(slurm_dir)}
    here = Path(sys.executable).parent / "hpctrain"
    if not env.get("HPCTRAIN_BIN") and not env.get("HPCTRAIN_IMAGE") and here.is_file():
        extra["HPCTRAIN_BIN"] = str(here)
    return extra


def dry_run(sweep_plan):
    """The commands `submit` would run, shlex-quoted, one a line."""
    extra = job_environment(sweep_plan["slurm_dir"])
    lines = [f"# hpctrain submit --dry-run: {len(sweep_plan['jobs'])} training jobs and a report job, run from "
             f"{os.getcwd()} with " + " ".join(f"{k}={shlex.quote(v)}" for k, v in extra.items())]
    lines += [shlex.join(j.command) for j in sweep_plan["jobs"]]
    ids = ":".join(f"<job id of {j.name}>" for j in sweep_plan["jobs"])
    lines.append(shlex.join(_with_dependency(sweep_plan["report"].command, ids)))
    return "\n".join(lines)


def _with_dependency(command, ids):
    return [a.replace("{ids}", ids) if a.startswith("--dependency=") else a for a in command]


def _sbatch(cmd, env, what):
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=SBATCH_TIMEOUT)
    except FileNotFoundError:
        raise UserError("sbatch not found: submit from a machine with the Slurm client commands "
                        "(or use --dry-run to see the commands)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"sbatch did not answer within {SBATCH_TIMEOUT} s for the {what} (is slurmctld up?)") from None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
        reason = reason.removeprefix("sbatch: error: ") or f"exit code {proc.returncode}"
        raise _Refused(f"sbatch refused the {what}: {reason}")
    job_id = (proc.stdout.strip().splitlines() or [""])[-1].split(";")[0]
    if not job_id.isdigit():
        raise UserError(f"sbatch gave no job id for the {what}: {proc.stdout.strip()!r}")
    return job_id


class _Refused(UserError):
    pass


def submit(sweep_plan, out=print):
    """Submits the sweep; returns the plan with job ids. A refused job cancels those already queued."""
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found: submit from a machine with the Slurm client commands "
                        "(or use --dry-run to see the commands)")
    sweep = sweep_plan["sweep"]
    if sweep.exists() and any(sweep.iterdir()):
        raise UserError(f"sweep folder {sweep} exists and is not empty; choose another -o")
    (sweep / "logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create the folder of --output
    env = {**os.environ, **job_environment(sweep_plan["slurm_dir"])}
    jobs, report = sweep_plan["jobs"], sweep_plan["report"]
    try:
        for j in jobs:
            j.job_id = _sbatch(j.command, env, f"{j.workers}-worker job")
        report.command = _with_dependency(report.command, ":".join(j.job_id for j in jobs))
        report.job_id = _sbatch(report.command, {**env, "HPCTRAIN_SWEEP_JOBS": " ".join(j.job_id for j in jobs)},
                                "report job")
    except _Refused as e:
        queued = [j.job_id for j in jobs if j.job_id]
        if queued:
            subprocess.run(["scancel", *queued], capture_output=True, timeout=SBATCH_TIMEOUT)
            raise UserError(f"{e} (cancelled the jobs already queued: {', '.join(queued)})") from None
        raise
    spec = sweep_plan["spec"]
    write_text(sweep / "sweep.json", json.dumps({
        "job": spec.name, "spec": str(sweep_plan["job_path"]),
        "backend": sweep_plan["backend"], "template": str(sweep_plan["template"]),
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cwd": os.getcwd(),
        "runs": [{**asdict(j), "run_dir": str(j.run_dir)} for j in jobs],
        "report": {**asdict(report), "run_dir": str(sweep / "report")}}, indent=2))
    width = len(str(max(j.workers for j in jobs)))
    out(f"hpctrain submit: {len(jobs)} training jobs of {spec.name} ({sweep_plan['backend']}, "
        f"template {sweep_plan['template'].name}) and a report job; sweep folder {sweep}")
    for j in jobs:
        out(f"  {j.workers:>{width}} worker{'s' if j.workers > 1 else ' '}: job {j.job_id} -> {j.run_dir}")
    out(f"  report: job {report.job_id}, after all of them (afterany) -> {sweep / 'report' / 'report.md'}")
    out(f"  logs: {sweep / 'logs'}/   follow: squeue -j {','.join([*(j.job_id for j in jobs), report.job_id])}")
    return sweep_plan
