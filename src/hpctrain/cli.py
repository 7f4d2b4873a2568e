"""The `hpctrain` command: parses arguments, calls one library function, maps errors to exit codes.

Library modules are imported inside each command so that `hpctrain --help` starts instantly.
"""
import argparse
import signal
import sys

from hpctrain import __version__
from hpctrain.errors import TrainingFailed, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_env(args):
    from hpctrain import envinfo

    envinfo.main(as_json=args.json)


def _load_spec(args):
    from hpctrain import spec

    overrides = list(args.set)
    if getattr(args, "backend", None):
        overrides.append(f"distribute.backend={args.backend}")
    return spec.load(args.job, overrides)


def cmd_train(args):
    from hpctrain.train import loop

    job = _load_spec(args)
    if args.dry_run:
        from hpctrain.train.dry_run import describe

        print(describe(job))
        return 0
    try:
        result = loop.train(job, resume=args.resume, force=args.force)
    except TrainingFailed as e:
        print(f"hpctrain train: failed: {e}", file=sys.stderr)
        return 1
    if result.stopped_at:
        epoch, step = result.stopped_at
        print(f"hpctrain train: stopped by signal in epoch {epoch + 1} after step {step}; checkpoint saved, "
              f"continue with --resume", file=sys.stderr)
        return loop.EXIT_RESUMABLE
    return 0


def cmd_launch(args):
    from hpctrain.distribute import launch

    job = _load_spec(args)
    launcher, processes, overrides = launch.plan(job.distribute.backend, args.n, args.launcher)
    argv = [sys.executable, "-m", "hpctrain", "train", args.job, "--backend", job.distribute.backend]
    for item in [*args.set, *overrides]:
        argv += ["--set", item]
    argv += [flag for flag, on in (("--resume", args.resume), ("--force", args.force)) if on]
    if args.print:
        for cmd in launch.command(processes, argv, launcher):
            print(launch.format_command(cmd))
        return 0
    return launch.run(processes, argv, launcher)


def cmd_evaluate(args):
    from hpctrain.evaluate import metrics, run

    result = run.evaluate(args.model, args.data, args.split, args.subset, args.json)
    print(metrics.format_table(result))


def cmd_predict(args):
    from hpctrain.evaluate import run

    print(run.predict(args.model, args.input, args.output, args.force))


def cmd_plot_tsne(args):
    from hpctrain.evaluate import run

    print(run.tsne(args.run, args.data, args.output, args.count))


def cmd_report(args):
    from hpctrain.report import scaling

    path = scaling.write(args.runs, args.output)
    print(path.read_text())
    print(f"written: {path.parent}/")


def cmd_scaling(args):
    from hpctrain import sweep

    overrides = list(args.set)
    path = sweep.run(args.job, sweep.parse_workers(args.workers), args.output, args.backend, args.launcher,
                     overrides, args.force, args.cores_per_worker)
    print(path.read_text())
    print(f"written: {path.parent}/")


def cmd_demo(args):
    from hpctrain import demo

    demo.run(args.output)


def _add_spec_arguments(p):
    p.add_argument("job", help="job spec (TOML), e.g. jobs/unet_isbi.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--backend", choices=("none", "horovod", "mirrored", "multiworker"),
                   help="shorthand for --set distribute.backend=...")


def build_parser():
    import hpctrain

    parser = _Parser(prog="hpctrain", description=hpctrain.__doc__)
    parser.add_argument("--version", action="version", version=f"hpctrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("env", help="print the software stack, devices and scheduler context")
    p.add_argument("--json", action="store_true", help="emit JSON")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("train", help="train the model of a job spec")
    _add_spec_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--dry-run", action="store_true", help="print the resolved spec and model size, do not train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("launch", help="train with N local workers (mpirun, horovodrun or N processes)")
    _add_spec_arguments(p)
    p.add_argument("-n", type=int, required=True, help="number of workers")
    p.add_argument("--launcher", choices=("mpirun", "horovodrun", "local"),
                   help="default: mpirun for horovod, local processes for multiworker")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--print", action="store_true", help="print the command(s) instead of running them")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("evaluate", help="score a trained model on a split of an HDF5 dataset")
    p.add_argument("model", help="run folder or checkpoint prefix")
    p.add_argument("--data", help="HDF5 dataset (default: the one the model was trained on)")
    p.add_argument("--split", help="split name (default: the training split)")
    p.add_argument("--subset", default="val", choices=("train", "val"))
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="U-Net: TIFF stack -> float32 TIFF of P(non-membrane); CNN: -> CSV")
    p.add_argument("model", help="run folder or checkpoint prefix")
    p.add_argument("--input", required=True, help="TIFF stack (U-Net) or IDX/TIFF images (CNN)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plot", help="plots of a trained model")
    plots = p.add_subparsers(dest="plot", required=True, parser_class=_Parser)
    p = plots.add_parser("tsne", help="t-SNE of a CNN's penultimate features on held-out digits")
    p.add_argument("run", help="run folder or checkpoint prefix")
    p.add_argument("--data", help="HDF5 dataset (default: the one the model was trained on)")
    p.add_argument("-o", "--output", default=None, help="PNG (default: RUN/tsne.png)")
    p.add_argument("--count", type=int, default=2000, help="digits to embed")
    p.set_defaults(func=cmd_plot_tsne)

    p = sub.add_parser("report", help="scaling report (tables, plots) of runs with different worker counts")
    p.add_argument("runs", nargs="+", help="run folders (each with timing.json)")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("scaling", help="run a job on 1, 2, ... local workers, then the scaling report")
    _add_spec_arguments(p)
    p.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2,4 (default 1,2)")
    p.add_argument("--launcher", choices=("mpirun", "horovodrun", "local"))
    p.add_argument("-o", "--output", required=True, help="sweep folder: w1/, w2/, ..., report/")
    p.add_argument("--force", action="store_true", help="replace existing run folders")
    p.add_argument("--cores-per-worker", type=int, help="CPU runs: pin each worker to its own N cores")
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("demo", help="pack ISBI 2012, train a U-Net on 1 and 2 workers, evaluate, report")
    p.add_argument("-o", "--output", default="runs/demo", help="demo folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds, so temporary outputs are removed


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"hpctrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hpctrain {args.command}: interrupted", file=sys.stderr)
        return 130
