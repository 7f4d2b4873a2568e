"""One rank of a Horovod job that times the exchange of a job's whole gradient set alone: one allreduce of
the parameter count of the job's model (built for its dataset, as training builds it) in float32, after 5
untimed ones, with hpctrain's Horovod settings.

    mpirun -np 2 ... .venv/bin/python benchmarks/exchange_cost.py JOB.toml [--repeats 40]

Rank 0 prints one JSON line: bytes, wall and CPU seconds per exchange (median over the repeats). The CPU
seconds are what the exchange takes from the rank's cores while TensorFlow could be computing.
"""
import argparse
import json
import statistics
import time

from hpctrain import compat, models, spec
from hpctrain.data import pipeline
from hpctrain.distribute import backends


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    job = spec.load(args.job, ["distribute.backend=horovod"])
    backends.create(job.distribute)  # hvd.init() with hpctrain's settings
    import horovod.tensorflow as hvd

    tf = compat.tf()
    info = pipeline.dataset_info(job.data.path)
    shape = models.get(job.model.name).input_shape(info["image_shape"], job.data.tile)
    count = models.build(job.model, shape, info["num_classes"], info["dtype"]).count_params()
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
