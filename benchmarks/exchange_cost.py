"""One rank of a Horovod job that times the exchange of a job's whole gradient set alone: one allreduce of
the model's parameter count in float32, after 5 untimed ones, with hpctrain's Horovod settings.

    mpirun -np 2 ... .venv/bin/python benchmarks/exchange_cost.py JOB.toml [--repeats 40]

Rank 0 prints one JSON line: bytes, wall and CPU seconds per exchange (median over the repeats). The CPU
seconds are what the exchange takes from the rank's cores while TensorFlow could be computing.
"""
import argparse
import json
import statistics
import time

from hpctrain import compat, models, spec
from hpctrain.distribute import backends


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--input-shape", default="128,128,1")
    parser.add_argument("--classes", type=int, default=2)
    args = parser.parse_args()
    job = spec.load(args.job, ["distribute.backend=horovod"])
    backends.create(job.distribute)  # hvd.init() with hpctrain's settings
    import horovod.tensorflow as hvd

    tf = compat.tf()
    shape = tuple(int(x) for x in args.input_shape.split(","))
    count = models.build(job.model, shape, args.classes).count_params()
    grads = tf.random.uniform([count])
    exchange = tf.function(lambda x: hvd.allreduce(x, op=hvd.Sum))
    walls, cpus = [], []
    for i in range(5 + args.repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        exchange(grads).numpy()
        if i >= 5:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    if hvd.rank() == 0:
        print(json.dumps({"ranks": hvd.size(), "bytes": 4 * count, "wall_s": statistics.median(walls),
                          "cpu_s": statistics.median(cpus)}), flush=True)


if __name__ == "__main__":
    main()
