"""Worker for tests/test_stack.py: one collective check per run, result written per rank as JSON."""
import json
import sys
from pathlib import Path

from hpctrain import compat


def horovod_allreduce():
    hvd = compat.horovod_keras()
    hvd.init()
    tf = compat.tf()
    total = hvd.allreduce(tf.constant([hvd.rank() + 1.0, 10.0]), op=hvd.Sum)
    return {"rank": hvd.rank(), "size": hvd.size(), "sum": total.numpy().tolist()}


def mpi4py_allreduce():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return {"rank": comm.rank, "size": comm.size, "sum": [comm.allreduce(comm.rank + 1.0), comm.allreduce(10.0)]}


def horovod_on_mpi4py():
    from mpi4py import MPI

    hvd = compat.horovod_keras()
    hvd.init(comm=MPI.COMM_WORLD)
    tf = compat.tf()
    total = hvd.allreduce(tf.constant([hvd.rank() + 1.0, 10.0]), op=hvd.Sum)
    return {"rank": hvd.rank(), "size": hvd.size(), "sum": total.numpy().tolist(),
            "mpi_rank": MPI.COMM_WORLD.rank, "mpi_enabled": hvd.mpi_enabled()}


def keras_fit():
    """A few steps of tf_keras fit with Horovod's DistributedOptimizer on rank-specific data."""
    hvd = compat.horovod_keras()
    hvd.init()
    tf, keras = compat.tf(), compat.keras()
    tf.random.set_seed(hvd.rank())  # different initial weights: the broadcast must fix that
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=hvd.DistributedOptimizer(keras.optimizers.SGD(0.05)), loss="mse")
    rng = __import__("numpy").random.default_rng(hvd.rank())
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)])
    return {"rank": hvd.rank(), "size": hvd.size(), "weights": [w.tolist() for w in model.get_weights()]}


if __name__ == "__main__":
    check, out = sys.argv[1], Path(sys.argv[2])
    result = globals()[check]()
    (out / f"rank{result['rank']}.json").write_text(json.dumps(result))
