"""A scaling sweep: the same job on 1, 2, ... workers, each into SWEEP/w<N>, then the scaling report in
SWEEP/report. With folds and seeds (`--folds 0-4 --seeds 3`, `hpctrain cv`) every worker count runs each
fold x seed, into SWEEP/w<N>/fold<F>-seed<S>, and the report gives their mean and spread. The plan is
built once (`plan`) and run on this node (`run`, `hpctrain scaling`) or as Slurm jobs
(hpctrain.launch.slurm, `hpctrain submit`). Every training command line of hpctrain comes from
`train_args`.
"""
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hpctrain import spec as spec_mod
from hpctrain.distribute import backends
from hpctrain.errors import UserError, one_of


def parse_counts(text, option="--workers"):
    """'1,2,4' -> [1, 2, 4]: the worker counts of a sweep (`hpctrain scaling`, `hpctrain submit`)."""
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"{option} takes worker counts like 1,2,4,8, not {text!r}") from None
    if not counts or counts[0] < 1:
        raise UserError(f"{option} needs positive worker counts, not {text!r}")
    return counts


def parse_folds(text):
    """'0-4' or '0,2,3' -> [0, 1, 2, 3, 4] or [0, 2, 3]."""
    try:
        folds = set()
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            folds.update(range(int(first), int(last or first) + 1))
    except ValueError:
        folds = set()
    if not folds or min(folds) < 0:
        raise UserError(f"--folds takes fold numbers like 0-4 or 0,2,3, not {text!r}")
    return sorted(folds)


def parse_seeds(count):
    if count is not None and count < 1:
        raise UserError(f"--seeds takes how many seeds to run (1 or more), not {count}")
    return count


def _check_folds(spec, folds):
    """Folds the dataset does not have are refused here, when its file can be read (before any run)."""
    from hpctrain.data.pipeline import dataset_info

    if not folds or not Path(spec.data.path).is_file():
        return
    have = sorted(s for s in dataset_info(spec.data.path)["splits"] if s.startswith("fold"))
    missing = [f for f in folds if f"fold{f}" not in have]
    if missing:
        raise UserError(f"--folds {','.join(map(str, missing))}: {spec.data.path} has "
                        + (", ".join(have) if have else "no folds"))


def repeats(spec, folds=None, seeds=None):
    """(label, overrides) of each repeat of a run: every fold x seed (seeds counted from train.seed); one
    unlabelled repeat without folds and seeds."""
    splits = [f"fold{f}" for f in folds] if folds else [None]
    values = [spec.train.seed + i for i in range(seeds)] if seeds else [None]
    out = []
    for split in splits:
        for seed in values:
            label = "-".join(x for x in (split, None if seed is None else f"seed{seed}") if x)
            out.append((label, ([f"data.split={toml_string(split)}"] if split else [])
                        + ([f"train.seed={seed}"] if seed is not None else [])))
    return out


def train_args(job_path, overrides=(), backend=None, flags=()):
    """The arguments of one `hpctrain train`: JOB, --set KEY=VALUE..., --backend B, then flags."""
    args = ["train", str(job_path)]
    for item in overrides:
        args += ["--set", item]
    return args + (["--backend", backend] if backend else []) + list(flags)


def hpctrain_command(args):
    """The command line that runs `hpctrain ARGS` with this Python."""
    return [sys.executable, "-m", "hpctrain", *args]


def toml_string(value):
    """A value as a TOML string (a JSON string is one), so that any path survives --set."""
    return json.dumps(str(value))


@dataclass(frozen=True)
class Run:
    workers: int
    run_dir: Path
    overrides: tuple  # the sweep's, then this run's repeat, folder and worker settings
    repeat: str = ""  # e.g. "fold2-seed43"; "" without folds and seeds


@dataclass(frozen=True)
class Sweep:
    job_path: Path
    spec: object           # the validated JobSpec
    backend: type          # a Backend class
    folder: Path
    runs: tuple

    def train_args(self, run, flags=()):
        return train_args(self.job_path, run.overrides, self.backend.name, flags)


def plan(job_path, counts, folder, backend=None, overrides=(), default_backend=None, folds=None, seeds=None):
    """The runs of a sweep of `counts` workers (each fold x seed) into `folder` (default:
    SPEC-NAME-sweep-TIME beside the spec's output.dir). The backend: `backend`, else the spec's, else
    `default_backend`; it must scale beyond one worker when a count does. The spec is validated with the
    overrides first, so mistakes surface before anything runs or is queued."""
    overrides, job_path = list(overrides), Path(job_path).resolve()
    spec = spec_mod.load(job_path, overrides + ([f"distribute.backend={backend}"] if backend else []))
    chosen = backends.BACKENDS[backend or spec.distribute.backend]
    if not chosen.scales() and default_backend and not backend:
        chosen = backends.BACKENDS[default_backend]
    if not chosen.scales() and max(counts) > 1:
        scaling = [n for n, b in backends.BACKENDS.items() if b.scales()]
        raise UserError(f"a scaling sweep needs a distributed backend: --backend {one_of(scaling)}")
    _check_folds(spec, folds)
    for n in counts:  # a batch that strong scaling cannot split is refused before anything runs
        spec.on_workers(n)
    folder = Path(folder or spec.output.dir.parent / f"{spec.name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    runs = []
    for n in counts:
        for label, repeat in repeats(spec, folds, seeds):
            run_dir = folder / f"w{n}" / label if label else folder / f"w{n}"
            runs.append(Run(n, run_dir, (*overrides, *repeat, f"output.dir={toml_string(run_dir)}",
                                         *chosen.worker_overrides(n)), label))
    return Sweep(job_path, spec, chosen, folder, tuple(runs))


def run(sweep, launcher=None, force=False, cores_per_worker=None, predict=None):
    """Runs a sweep on this node, one run after the other, then writes SWEEP/report (with `predict`, a
    report.predict.Request, its predicted rows); returns report.md.
    `cores_per_worker` pins each CPU worker to its own cores, so every run gives a worker the same share."""
    from hpctrain.launch import local
    from hpctrain.report import scaling

    env = {"HPCTRAIN_CORES_PER_WORKER": str(cores_per_worker)} if cores_per_worker else {}
    for r in sweep.runs:
        print(f"hpctrain scaling: {r.workers} worker{'s' * (r.workers > 1)}{' ' + r.repeat if r.repeat else ''} "
              f"-> {r.run_dir}", flush=True)
        chosen, processes, _ = sweep.backend.local_plan(r.workers, launcher)
        argv = hpctrain_command(sweep.train_args(r, ["--force"] if force else []))
        code = local.run(processes, argv, chosen, env=env)
        if code != 0:
            what = f"the {r.workers}-worker run" + (f" {r.repeat}" if r.repeat else "")
            raise UserError(f"{what} failed (exit code {code}); see its output above")
    return scaling.write([r.run_dir for r in sweep.runs], sweep.folder / "report", predict=predict)
