"""The scaling model against measurement on two nodes of the test cluster (tests/node_cluster.py; root), each
node's link shaped with tc tbf to a rate: `hpctrain bench allreduce` measures the network across the nodes,
a 1-worker and a 2-node Horovod run (mpirun over TCP, one core per node) train the MNIST CNN, and
`hpctrain report --predict 2 --allreduce` predicts the 2-node throughput from the 1-worker step and that
network; printed side by side, with and without fp16 gradient compression.

    .venv/bin/python benchmarks/predict_shaped.py [--rates 1gbit,3gbit] [--steps 40] [--repeats 2]
        [--compressions none,fp16]
"""
import argparse
import json
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from faults_multinode import env_of, on_node1

from common import ROOT, pack_mnist, write_job

sys.path.insert(0, str(ROOT / "tests"))
from node_cluster import NodeCluster  # noqa: E402

HOSTS = ["--hosts", "node1:1,node2:1"]


def case(cluster, env, tmp, job, rate, compression, network, round_):
    """(predicted, measured) 2-node samples/s, and the 2-node run's breakdown (ms)."""
    out = Path(tmp) / f"{rate}-{compression}-{round_}"
    runs = []
    for workers, where in ((1, ["-n", 1]), (2, HOSTS)):
        run = out / f"w{workers}"
        on_node1(cluster, env, "launch", job, *where, "--backend", "horovod", "--force",
                 "--set", f"output.dir={json.dumps(str(run))}", "--set", f"distribute.compression={compression}")
        runs.append(run)
    on_node1(cluster, env, "report", *runs, "-o", out / "report", "--predict", 2, "--allreduce", network)
    group = json.loads((out / "report" / "report.json").read_text())[0]
    row = {r["workers"]: r for r in group["prediction"]["rows"]}[2]
    parts = {k: 1e3 * v for k, v in {r["workers"]: r for r in group["rows"]}[2]["breakdown"]["seconds"].items()}
    print(f"  {rate} {compression}: predicted exchange {1e3 * (row['latency_s'] + row['bandwidth_s']):.1f} ms; "
          "2-node breakdown " + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items()), flush=True)
    return row["samples_per_s"], row["measured_samples_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1gbit,3gbit", help="tc rates of each node's link, e.g. 1gbit,3gbit")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compressions", default="none,fp16", help="distribute.compression values to run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cluster is torn down on the way out
    cluster = NodeCluster(Path(tempfile.mkdtemp(prefix="hpctrain-nodes-")))
    rows = []
    try:
        cluster.start()
        env = env_of(cluster)
        with tempfile.TemporaryDirectory() as tmp:
            data = pack_mnist(tmp)
            job = write_job(Path(tmp) / "cnn.toml", name="cnn", data={"path": str(data), "split": "holdout"},
                            model={"name": "mnist_cnn"},
                            train={"precision": "fp32", "batch_size": 64, "epochs": 1, "steps_per_epoch": args.steps,
                                   "validation": False, "warmup_steps": 5, "breakdown_steps": 5},
                            distribute={"lr_scaling": "none"}, output={"dir": "unused", "tensorboard": False})
            for rate in args.rates.split(","):
                for node in cluster.nodes:
                    cluster.shape(node, rate)
                network = Path(tmp) / f"allreduce-{rate}.json"
                on_node1(cluster, env, "bench", "allreduce", job, "--backend", "horovod", *HOSTS, "-b", "64K",
                         "-e", "64M", "-f", 4, "--repeats", 2, "-o", network)
                fit = json.loads(network.read_text())["fit"]
                for compression in args.compressions.split(","):
                    pairs = [case(cluster, env, tmp, job, rate, compression, network, r) for r in range(args.repeats)]
                    errors = [p / m - 1 for p, m in pairs]
                    rows.append((rate, fit["busbw_GBps"] * 8, compression, statistics.median(p for p, _ in pairs),
                                 statistics.median(m for _, m in pairs), statistics.median(errors), min(errors),
                                 max(errors)))
                    print(f"{rate} {compression}: " + ", ".join(f"predicted {p:.0f} / measured {m:.0f}"
                                                                for p, m in pairs), flush=True)
    finally:
        cluster.stop()
    print(f"\nMNIST CNN, batch 64 per worker, {args.steps} steps (5 warm-up), 2 nodes x 1 worker (Horovod, mpirun "
          f"over TCP), median of {args.repeats} rounds\n")
    print("| link rate (tc) | measured busbw (Gbit/s) | compression | predicted samples/s | measured samples/s | "
          "prediction error | range |\n|---|---:|---|---:|---:|---:|---:|")
    for rate, busbw, compression, predicted, measured, error, low, high in rows:
        print(f"| {rate} | {busbw:.2f} | {compression} | {predicted:.0f} | {measured:.0f} | {100 * error:+.1f} % | "
              f"{100 * low:+.1f} to {100 * high:+.1f} % |")


if __name__ == "__main__":
    main()
