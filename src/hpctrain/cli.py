"""The `hpctrain` command: parses arguments, calls one library function, maps errors to exit codes.

Library modules are imported inside each command so that `hpctrain --help` starts instantly.
"""
import argparse
import functools
import os
import signal
import sys

from hpctrain import __version__, atomic
from hpctrain.errors import TrainingFailed, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def cmd_env(args):
    if args.interface_variables:  # for job scripts: NAME=VALUE lines to export
        from hpctrain.distribute import network

        for name, value in network.variables(args.interface_variables).items():
            print(f"{name}={value}")
        return
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
    from hpctrain.distribute import backends, network
    from hpctrain.launch import local, sweep

    job = _load_spec(args)
    backend = backends.BACKENDS[job.distribute.backend]
    interface = network.chosen(job.distribute.interface)
    how = local.plan(backend, args.n, args.launcher, args.hosts, args.hostfile, interface)
    job.on_workers(how.workers)  # a batch that strong scaling cannot split is refused before anything starts
    flags = [flag for flag, on in (("--resume", args.resume), ("--force", args.force)) if on]
    argv = sweep.hpctrain_command(sweep.train_args(args.job, [*args.set, *how.overrides], backend.name, flags))
    if args.print:
        for cmd in local.command(how.processes, argv, how.launcher, how.where):
            print(local.format_command(cmd))
        return 0
    return local.run(how.processes, argv, how.launcher, where=how.where, run_dir=job.output.dir)


def cmd_bench_allreduce(args):
    from hpctrain.launch import bench

    return bench.allreduce(args.job, args.set, args.backend, bench.Workers(args.n, args.launcher, args.hosts,
                                                                           args.hostfile),
                           (args.min_bytes, args.max_bytes, args.factor), args.repeats, args.output)


def cmd_evaluate(args):
    from hpctrain.evaluate import run, table

    result = run.evaluate(args.model, args.data, args.split, args.subset, args.json, args.isbi or None)
    print(table.format_table(result))


def cmd_predict(args):
    from hpctrain.evaluate import run

    print(run.predict(args.model, args.input, args.output, args.force))


def cmd_plot_tsne(args):
    from hpctrain.evaluate import run

    print(run.tsne(args.run, args.data, args.output, args.count))


def cmd_report(args):
    from hpctrain.report import scaling

    path = scaling.write(args.runs, args.output, allow_missing=args.allow_missing, predict=_prediction(args))
    print(path.read_text())
    print(f"written: {path.parent}/")
    missing = scaling.missing_runs(args.runs) if args.allow_missing else []
    if missing:
        print(f"hpctrain report: note: {len(missing)} of {len(args.runs)} runs have no timing.json (named in "
              f"the report): {', '.join(map(str, missing))}", file=sys.stderr)
    return 1 if missing and len(missing) == len(args.runs) else 0


def _prediction(args):
    """The report.predict.Request of --predict and its network options, or None."""
    if getattr(args, "predict", None) is None:
        if getattr(args, "network", None) or getattr(args, "allreduce", None):
            raise UserError("--network and --allreduce go with --predict N,N,...")
        return None
    from hpctrain.launch import sweep
    from hpctrain.report import predict

    node = predict.parse_network(args.node_network) if args.node_network else None
    return predict.Request(tuple(sweep.parse_counts(args.predict, "--predict")),
                           predict.parse_network(args.network) if args.network else None,
                           predict.Bench.load(args.allreduce) if args.allreduce else None,
                           args.workers_per_node, node)


def _add_predict_arguments(p):
    p.add_argument("--predict", metavar="N,N,...", help="also predict step time, throughput and efficiency at these "
                                                         "worker counts (hpctrain.report.predict)")
    p.add_argument("--network", metavar="BANDWIDTH,LATENCY", help="predict on this network, e.g. 100Gbit/s,2us")
    p.add_argument("--allreduce", metavar="FILE",
                   help="the network (unless --network) and the backend's overhead per message measured by "
                        "hpctrain bench allreduce -o FILE")
    p.add_argument("--workers-per-node", type=int, default=1, metavar="W",
                   help="workers per node: a ring inside each node, then across nodes (default 1)")
    p.add_argument("--node-network", metavar="BANDWIDTH,LATENCY",
                   help="the network inside a node (with --workers-per-node above 1)")


def cmd_submit(args):
    from hpctrain.launch import slurm, sweep

    plan = slurm.plan(args.job, sweep.parse_counts(args.gpus, "--gpus"), backend=args.backend, nodes=args.nodes,
                      gpus_per_node=args.gpus_per_node, cpu=args.cpu, template=args.template, output=args.output,
                      overrides=args.set, cpus_per_task=args.cpus_per_task, partition=args.partition,
                      account=args.account, time_limit=args.time, sbatch_args=args.sbatch_arg,
                      **_repeats(args))
    if args.dry_run:
        print(slurm.dry_run(plan))
        return 0
    slurm.submit(plan)


def _repeats(args):
    from hpctrain.launch import sweep

    return {"folds": sweep.parse_folds(args.folds) if args.folds else None, "seeds": sweep.parse_seeds(args.seeds)}


def cmd_scaling(args):
    from hpctrain.launch import sweep

    counts = sweep.parse_counts(args.workers) if hasattr(args, "workers") else [args.n]
    plan = sweep.plan(args.job, counts, args.output, args.backend, args.set, **_repeats(args))
    path = sweep.run(plan, args.launcher, args.force, args.cores_per_worker, _prediction(args))
    print(path.read_text())
    print(f"written: {path.parent}/")


def cmd_demo(args):
    from hpctrain import demo

    demo.run(args.output)


def cmd_pack(args):
    import importlib

    from hpctrain.data.dataset import open_dataset
    from hpctrain.data.describe import summary

    packer = importlib.import_module(f"hpctrain.data.{args.format.removesuffix('-em')}")  # synthetic-em: synthetic
    options = {k: v for k, v in vars(args).items() if k not in ("command", "format", "func", "output")}
    with open_dataset(packer.pack(args.output, **options)) as ds:
        print(f"wrote {summary(ds)}")


def cmd_inspect(args):
    from hpctrain.data.describe import describe

    print(describe(args.file))


def cmd_verify(args):
    from hpctrain.data.verify import verify

    print(verify(args.file))

def _add_repeat_arguments(p, folds_required=False):
    p.add_argument("--folds", required=folds_required, metavar="F-F|F,F,...",
                   help="train on each of these folds of the dataset, e.g. 0-4 (its splits fold0..fold4)")
    p.add_argument("--seeds", type=int, metavar="K", help="K seeds per run, counted from train.seed")


def _add_spec_arguments(p):
    from hpctrain.distribute import backends

    p.add_argument("job", help="job spec (TOML), e.g. jobs/unet_isbi.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--backend", choices=list(backends.BACKENDS), help="shorthand for --set distribute.backend=...")


def build_parser():
    import hpctrain
    from hpctrain.launch.local import LAUNCHERS

    parser = _Parser(prog="hpctrain", description=hpctrain.__doc__)
    parser.add_argument("--version", action="version", version=f"hpctrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("env", help="print the software stack, devices and scheduler context")
    p.add_argument("--json", action="store_true", help="emit JSON")
    p.add_argument("--interface-variables", metavar="IFACE",
                   help="print the variables that make every transport use IFACE (NAME=VALUE lines)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("train", help="train the model of a job spec")
    _add_spec_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--dry-run", action="store_true", help="print the resolved spec and model size, do not train")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("launch", help="train with N workers here or on named hosts (mpirun, horovodrun or N processes)")
    _add_spec_arguments(p)
    p.add_argument("-n", type=int, help="number of workers (with --hosts/--hostfile default: one per slot)")
    on = p.add_mutually_exclusive_group()
    on.add_argument("--hosts", metavar="HOST:SLOTS,...", help="workers on these hosts, e.g. node1:2,node2:2 "
                                                              "(started through ssh, or $HPCTRAIN_RSH)")
    on.add_argument("--hostfile", metavar="FILE", help="hosts in Open MPI's hostfile format ('node1 slots=2')")
    p.add_argument("--launcher", choices=LAUNCHERS, help="default: the backend's first (mpirun for horovod, "
                                                         "supervised local processes for the others)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--print", action="store_true", help="print the command(s) instead of running them")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("bench", help="micro-benchmarks on the workers of a job")
    benches = p.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    p = benches.add_parser("allreduce", help="latency and bus bandwidth of the backend's allreduce over the job's "
                                             "workers, 4 B to 256 MB and the job's gradient set (as nccl-tests)")
    _add_spec_arguments(p)
    p.add_argument("-n", type=int, help="start N workers on this node (as launch); without -n/--hosts/--hostfile "
                                        "this process is one of the job's workers (under mpirun, srun, ...)")
    on = p.add_mutually_exclusive_group()
    on.add_argument("--hosts", metavar="HOST:SLOTS,...", help="start workers on these hosts (as launch)")
    on.add_argument("--hostfile", metavar="FILE", help="start workers on the hosts of FILE (as launch)")
    p.add_argument("--launcher", choices=LAUNCHERS, help="as launch")
    p.add_argument("-b", "--min-bytes", default="4", metavar="SIZE", help="smallest message (default 4)")
    p.add_argument("-e", "--max-bytes", default="256M", metavar="SIZE", help="largest message (default 256M)")
    p.add_argument("-f", "--factor", type=int, default=2, help="size factor between messages (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed blocks per size; the median is reported (default 3)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(func=cmd_bench_allreduce)

    p = sub.add_parser("evaluate", help="score a trained model on a split of an HDF5 dataset")
    p.add_argument("model", help="run folder or checkpoint prefix")
    p.add_argument("--data", help="HDF5 dataset (default: the one the model was trained on)")
    p.add_argument("--split", help="split name (default: the training split)")
    p.add_argument("--subset", default="val", choices=("train", "val"))
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--isbi", action="store_true",
                   help="segmentation: also the ISBI 2012 boundary scores (Rand error, V_Rand, V_Info), which are "
                        "computed by default only when class 0 is named membrane")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="U-Net: TIFF stack -> float32 TIFF of class probabilities; CNN: -> CSV")
    p.add_argument("model", help="run folder or checkpoint prefix")
    p.add_argument("--input", required=True, help="a TIFF image or stack of grey levels")
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
    p.add_argument("--allow-missing", action="store_true",
                   help="name runs without timing.json in the report instead of failing (exit 1 if none has one)")
    _add_predict_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("submit", help="Slurm: one training job per worker count, then a report job")
    _add_spec_arguments(p)
    p.add_argument("--gpus", required=True, metavar="N,N,...", help="worker (GPU) counts, e.g. 1,2,4,8")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--nodes", type=int, help="nodes of the largest run (default 1: every run on one node)")
    where.add_argument("--gpus-per-node", type=int, help="GPUs per node; a run takes as many nodes as it needs")
    p.add_argument("--cpu", action="store_true", help="request no GPUs: each worker is a CPU process")
    p.add_argument("--template", help="a template of slurm/ (horovod-srun, horovod-mpirun, ...) or a path "
                                      "(default: by backend)")
    p.add_argument("-o", "--output", help="sweep folder (default: next to the spec's output.dir)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per task (default: the template's)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--time", help="time limit of each training job, e.g. 01:00:00 (default: the template's)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option for the training jobs, e.g. --sbatch-arg=--qos=high (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch commands, submit nothing")
    _add_repeat_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("scaling", help="run a job on 1, 2, ... local workers, then the scaling report")
    _add_spec_arguments(p)
    p.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2,4 (default 1,2)")
    p.add_argument("--launcher", choices=LAUNCHERS)
    p.add_argument("-o", "--output", required=True, help="sweep folder: w1/, w2/, ..., report/")
    p.add_argument("--force", action="store_true", help="replace existing run folders")
    p.add_argument("--cores-per-worker", type=int, help="CPU runs: pin each worker to its own N cores")
    _add_repeat_arguments(p)
    _add_predict_arguments(p)
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("cv", help="run a job on each fold (and seed) here, then the report of their mean and spread")
    _add_spec_arguments(p)
    p.add_argument("-n", type=int, default=1, help="workers of each run (default 1)")
    p.add_argument("--launcher", choices=LAUNCHERS)
    p.add_argument("-o", "--output", required=True, help="folder: w<N>/fold<F>-seed<S>/ runs, report/")
    p.add_argument("--force", action="store_true", help="replace existing run folders")
    p.add_argument("--cores-per-worker", type=int, help="CPU runs: pin each worker to its own N cores")
    _add_repeat_arguments(p, folds_required=True)
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("demo", help="pack ISBI 2012, train a U-Net on 1 and 2 workers, evaluate, report")
    p.add_argument("-o", "--output", default="runs/demo", help="demo folder (default runs/demo)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("pack", help="pack a dataset into an hpctrain HDF5 file")
    p.set_defaults(func=cmd_pack)
    formats = p.add_subparsers(dest="format", required=True, parser_class=_Parser)
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    out.add_argument("--force", action="store_true", help="overwrite an existing output")
    out.add_argument("--compression", choices=("gzip", "lzf"), help="compress each stored sample (default: none)")
    f = formats.add_parser("isbi", parents=[out], help="ISBI 2012 EM stacks (multi-page TIFF)")
    f.add_argument("--volume", required=True, help="image stack, e.g. train-volume.tif")
    f.add_argument("--labels", required=True, help="label stack, 0/255 or 0/1, e.g. train-labels.tif")
    f.add_argument("--test", help="test stack without labels, e.g. test-volume.tif")
    f = formats.add_parser("mnist", parents=[out], help="MNIST IDX files (raw or .gz)")
    f.add_argument("--images", required=True, help="e.g. t10k-images-idx3-ubyte.gz")
    f.add_argument("--labels", required=True, help="e.g. t10k-labels-idx1-ubyte.gz")
    f = formats.add_parser("images", parents=[out], help="a folder or glob of PNG/TIFF slices and their masks")
    f.add_argument("--images", required=True, help="folder or glob of image slices")
    f.add_argument("--masks", required=True, help="folder or glob of masks, paired by file stem")
    f.add_argument("--mask-suffix", default="", metavar="SUFFIX",
                   help="a mask's stem is its image's plus SUFFIX, e.g. _mask for slice_3_mask.png (default: none)")
    f.add_argument("--pair-by", choices=("stem", "order"), default="stem",
                   help="pair images and masks by file stem (default) or by position in natural order")
    f.add_argument("--test", help="folder or glob of unlabelled slices")
    f.add_argument("--class-names", type=lambda s: s.split(","), metavar="A,B,...",
                   help="names of mask classes 0, 1, ... (default background,foreground, or background,class1,... "
                        "for --classes N)")
    f.add_argument("--classes", type=int, default=2, metavar="N",
                   help="masks hold class ids 0..N-1 (grey levels or palette indices); default 2: two-valued masks")
    f.add_argument("--mask-threshold", type=int, metavar="T",
                   help="anti-aliased masks: a pixel >= T is class 1, below it class 0")
    f.add_argument("--channels", type=int, choices=(1, 3),
                   help="store grey (1; colour by luminance) or RGB (3); default: the first image's")
    f = formats.add_parser("classes", parents=[out], help="a folder of class sub-folders of PNG/TIFF images")
    f.add_argument("--root", required=True, help="folder with one sub-folder of images per class, named by class")
    f.add_argument("--channels", type=int, choices=(1, 3),
                   help="store grey (1; colour by luminance) or RGB (3); default: the first image's")
    f = formats.add_parser("synthetic-em", parents=[out], help="EM-like images with membrane masks")
    f.add_argument("--count", type=int, required=True, help="number of samples")
    f.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    f.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    p = sub.add_parser("inspect", help="shapes, class balance, splits and provenance of an HDF5 dataset")
    p.add_argument("file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="re-check an HDF5 dataset's schema and content hash")
    p.add_argument("file")
    p.set_defaults(func=cmd_verify)
    return parser


def _terminated(command, signum, frame):
    """Ends the process at once, leaving no partial output. An exception raised here could be swallowed
    by the native code it lands in (h5py ignores exceptions in deallocators), so none is raised."""
    atomic.discard_pending()
    print(f"hpctrain {command}: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def main(argv=None):
    args = build_parser().parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, functools.partial(_terminated, args.command))
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"hpctrain {args.command}: error: {e}", file=sys.stderr)
        return 2
