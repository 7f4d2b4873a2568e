"""`hpctrain scaling`: the same job on 1, 2, ... local workers, then the scaling report — the local twin
of `hpctrain submit` on Slurm. Sweep folder: SWEEP/w1, SWEEP/w2, ... and SWEEP/report/."""
import sys
from pathlib import Path

from hpctrain import spec as spec_mod
from hpctrain.launch import local as launch
from hpctrain.errors import UserError


def parse_counts(text, option="--workers"):
    """'1,2,4' -> [1, 2, 4]: the worker counts of a sweep (`hpctrain scaling`, `hpctrain submit`)."""
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"{option} takes worker counts like 1,2,4,8, not {text!r}") from None
    if not counts or counts[0] < 1:
        raise UserError(f"{option} needs positive worker counts, not {text!r}")
    return counts


def run(job_path, workers, out, backend=None, launcher=None, overrides=(), force=False, cores_per_worker=None):
    """Trains the job once per worker count into OUT/w<N>, then writes OUT/report. Returns report.md.
    `cores_per_worker` pins each CPU worker to its own cores, so every run gives a worker the same share."""
    from hpctrain.report import scaling

    overrides = list(overrides) + ([f"distribute.backend={backend}"] if backend else [])
    job = spec_mod.load(job_path, overrides)
    if job.distribute.backend == "none":
        raise UserError("a scaling sweep needs a distributed backend: --backend horovod, mirrored or multiworker")
    out = Path(out)
    runs = []
    for n in workers:
        run_dir = out / f"w{n}"
        print(f"hpctrain scaling: {n} worker{'s' * (n > 1)} -> {run_dir}", flush=True)
        chosen, processes, extra = launch.plan(job.distribute.backend, n, launcher)
        argv = [sys.executable, "-m", "hpctrain", "train", str(job_path)]
        for item in [*overrides, f"output.dir={run_dir}", *extra]:
            argv += ["--set", item]
        if force:
            argv.append("--force")
        env = {"HPCTRAIN_CORES_PER_WORKER": str(cores_per_worker)} if cores_per_worker else {}
        code = launch.run(processes, argv, chosen, env=env)
        if code != 0:
            raise UserError(f"the {n}-worker run failed (exit code {code}); see its output above")
        runs.append(run_dir)
    return scaling.write(runs, out / "report")
