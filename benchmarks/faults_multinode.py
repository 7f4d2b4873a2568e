"""Two nodes of the test cluster (tests/node_cluster.py; root): how fast a fault on one node ends the whole
job, per launcher, and 2-node Horovod throughput against the side-by-side ceiling.

    .venv/bin/python benchmarks/faults_multinode.py [--repeats 3] [--steps 40] [--stall-timeout 15]
                                                   [--launchers mpirun,horovodrun,multiworker,srun]
                                                   [--faults "node killed,link cut,rank frozen"] [--no-throughput]

Faults (on node2, once the run has ended an epoch): every process of the node killed (its slurmd spared),
the node's link set down, its rank stopped with SIGSTOP. Printed: seconds from the fault to the job's end
(median and range over the rounds), exit code, and whether any process of the job was left on a node.
Throughput: the U-Net of scaling_cpu.py, Horovod over TCP between the nodes (one core each; mpirun and
horovodrun --gloo through `launch --hosts`, those of them in --launchers), against two independent 1-worker
runs at once, one per node, that never communicate, and against what those runs would have made in lockstep
(common.lockstep: each step as long as the slower node's step at that moment, the wait no synchronous job
escapes); then the exchange of the gradient set timed alone on
the two nodes (`hpctrain bench allreduce`), and the bound its cost puts on the 2-node figure.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import HPCTRAIN, ROOT, lockstep, pack_mnist, write_job

sys.path.insert(0, str(ROOT / "tests"))
from hpctrain import spec  # noqa: E402
from node_cluster import FAULTS, NodeCluster, fault_run  # noqa: E402

# launcher -> (backend, argv after the job) of a 2-node job started on node1
LAUNCHERS = {
    "mpirun": ("horovod", ["launch", "--hosts", "node1:1,node2:1", "--launcher", "mpirun"]),
    "horovodrun": ("horovod", ["launch", "--hosts", "node1:1,node2:1", "--launcher", "horovodrun"]),
    "multiworker": ("multiworker", ["launch", "--hosts", "node1:1,node2:1", "--launcher", "local"]),
    "srun": ("horovod", ["train"]),
}
SIDE_BY_SIDE = "side by side (1 worker on each node)"
LOCKSTEP = "side by side, in lockstep (each step the slower node's)"
SRUN = ["srun", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--mpi=pmix", "--kill-on-bad-exit=1"]


def env_of(cluster):
    return {**cluster.env, "PATH": os.pathsep.join([str(cluster.bin), os.path.dirname(HPCTRAIN), cluster.env["PATH"]]),
            "HPCTRAIN_INTERFACE": cluster.interface}


def argv_of(launcher, job):
    backend, args = LAUNCHERS[launcher]
    command, *rest = args
    prefix = SRUN if launcher == "srun" else []
    return [*prefix, HPCTRAIN, command, str(job), *rest, "--backend", backend]


def faults(cluster, tmp, args):
    data = pack_mnist(tmp)
    rows = []
    for launcher in args.launchers.split(","):
        for fault in args.faults.split(","):
            runs = []
            for round_ in range(args.repeats):
                out = Path(tmp) / f"fault-{launcher}-{fault.replace(' ', '-')}-{round_}"
                job = write_job(Path(tmp) / "fault.toml", name="fault", data={"path": str(data), "split": "holdout"},
                                model={"name": "lenet5"},
                                train={"precision": "fp32", "batch_size": 16, "epochs": 1000, "steps_per_epoch": 20,
                                       "validation": False},
                                distribute={"stall_timeout": args.stall_timeout},
                                output={"dir": str(out), "tensorboard": False})
                result = fault_run(cluster, argv_of(launcher, job), env_of(cluster), out, fault)
                runs.append(result)
                left = sum(map(len, result.leftovers.values()))
                print(f"{launcher:11} {fault:12} round {round_ + 1}: exit {result.code} after "
                      f"{result.seconds:.1f} s, {left} processes left {result.leftovers if left else ''}", flush=True)
            seconds = [r.seconds for r in runs]
            left = sum(sum(map(len, r.leftovers.values())) for r in runs)
            rows.append((launcher, fault, statistics.median(seconds), min(seconds), max(seconds),
                         sorted({r.code for r in runs}, key=str), left))
    print(f"\nfrom the fault to the job's end, median of {args.repeats} rounds "
          f"(stall_timeout {args.stall_timeout:g} s)\n")
    print("| launcher | fault | seconds | range | exit codes | processes left |\n|---|---|---:|---:|---|---:|")
    for launcher, fault, median, low, high, codes, left in rows:
        print(f"| {launcher} | {fault} | {median:.1f} | {low:.1f}-{high:.1f} | {', '.join(map(str, codes))} | {left} |")


def throughput(cluster, tmp, args):
    from scaling_cpu import job_file, timing_of, unet_data
    from scaling_cpu import throughput as samples_per_s

    job = job_file(tmp, "unet", unet_data(tmp, args.steps), args.steps)
    env = env_of(cluster)

    two = {label: launcher for label, launcher in (("2 nodes x 1 worker (horovod mpirun, TCP)", "mpirun"),
                                                   ("2 nodes x 1 worker (horovodrun --gloo, TCP)", "horovodrun"))
           if launcher in args.launchers.split(",")}
    results = {**{label: [] for label in two}, SIDE_BY_SIDE: [], LOCKSTEP: []}
    for round_ in range(args.repeats):
        out = Path(tmp) / f"tp-{round_}"
        procs = [cluster.popen(node, [HPCTRAIN, "train", str(job), "--force", "--set",
                                      f"output.dir={json.dumps(f'{out}-{node}')}"], env=env, stdout=subprocess.DEVNULL)
                 for node in ("node1", "node2")]
        if any(p.wait() for p in procs):
            raise SystemExit("a side-by-side run failed")
        timings = [timing_of(f"{out}-{n}") for n in ("node1", "node2")]
        results[SIDE_BY_SIDE].append(sum(t["throughput"]["samples_per_s"] for t in timings))
        results[LOCKSTEP] += [locked] if (locked := lockstep(timings)) else []  # the runs' steps overlapped
        for i, (label, launcher) in enumerate(two.items()):
            proc = cluster.on("node1", HPCTRAIN, "launch", str(job), "--hosts", "node1:1,node2:1", "--backend",
                              "horovod", "--launcher", launcher, "--force", "--set",
                              f"output.dir={json.dumps(f'{out}-{i}')}", env=env, timeout=1800)
            if proc.returncode:
                raise SystemExit(f"the 2-node run failed: {proc.stderr[-2000:]}")
            results[label].append(samples_per_s(Path(f"{out}-{i}")))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()), flush=True)
    ceiling = statistics.median(results[SIDE_BY_SIDE])
    in_lockstep = statistics.median(results[LOCKSTEP]) if results[LOCKSTEP] else None
    results = {label: values for label, values in results.items() if values}
    print(f"\nU-Net of scaling_cpu.py, {args.steps} steps (5 warm-up), median of {args.repeats} rounds\n")
    print("| run | samples/s | range | of side by side | of lockstep |\n|---|---:|---:|---:|---:|")
    for label, values in results.items():
        median = statistics.median(values)
        of_locked = f"{100 * median / in_lockstep:.1f} %" if in_lockstep else "-"
        print(f"| {label} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {100 * median / ceiling:.1f} % | "
              f"{of_locked} |")
    exchange_bound(cluster, job, env, step=spec.load(job).train.batch_size / (ceiling / 2))


def on_node1(cluster, env, *argv):
    """hpctrain ARGV run on node1 -> its output; a failure ends the benchmark."""
    proc = cluster.on("node1", HPCTRAIN, *map(str, argv), env=env, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"hpctrain {' '.join(map(str, argv[:2]))} failed: {proc.stderr[-2000:]}")
    return proc.stdout


def exchange_bound(cluster, job, env, step):
    """What the exchange of the gradient set alone costs on the two nodes (`hpctrain bench allreduce` over
    mpirun, TCP), and the bound it puts on 2-node throughput: step / (step + cost), with none of the exchange's
    wall time hidden behind compute, and with all of it hidden but its CPU time (each node has one core)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "allreduce.json"
        on_node1(cluster, env, "bench", "allreduce", job, "--backend", "horovod", "--hosts", "node1:1,node2:1",
                 "--launcher", "mpirun", "-b", "4", "-e", "4", "--repeats", 8, "-o", out)
        cost = json.loads(out.read_text())["gradient_set"]
    print(f"\nexchange of the gradient set alone ({cost['bytes'] / 1e6:.1f} MB, 2 nodes, mpirun): "
          f"{1e3 * cost['time_s']:.1f} ms wall, {1e3 * cost['cpu_s']:.1f} ms CPU per step; 1-worker step "
          f"{1e3 * step:.0f} ms -> 2-node bound {100 * step / (step + cost['time_s']):.1f} % (no overlap) to "
          f"{100 * step / (step + cost['cpu_s']):.1f} % (all but the CPU time hidden) of side by side")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--stall-timeout", type=float, default=15)
    parser.add_argument("--launchers", default=",".join(LAUNCHERS))
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--no-throughput", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cluster is torn down on the way out
    cluster = NodeCluster(Path(tempfile.mkdtemp(prefix="hpctrain-nodes-")))
    try:
        cluster.start()
        with tempfile.TemporaryDirectory() as tmp:
            if args.faults:
                faults(cluster, tmp, args)
            if not args.no_throughput:
                throughput(cluster, tmp, args)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
