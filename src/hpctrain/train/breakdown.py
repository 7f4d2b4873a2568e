"""Where a training step's time goes, measured on the run's own workers after its last step
(train.breakdown_steps calls of each kind, back to back; 0: off). The weights and the optimizer's state are
saved before and put back after, so the run's model is the one training made.

- step:     the compiled training step on the run's own input pipeline (input, compute, exchange, update)
- one batch: the same step on one batch held in memory; input wait = step - one batch
- compute:  forward + backward alone, on that batch (no exchange, no update)
- exchange: the allreduce of the model's gradient set alone (the backend's collective, as `bench allreduce`)
- other:    one batch - compute - exchange: the update and the framework. It is the one part not timed on
            its own; where the backend overlaps exchange with compute it shrinks, and below 0 the overlap
            hid more than the update cost.

Each figure is a median over the calls of one rank; timing.json keeps every rank's, and their median and
range. The run's own step time (StepTimer, which also holds the callbacks) is set beside them.
"""
import statistics
import time

import numpy as np

from hpctrain import compat

KINDS = ("step", "one_batch", "compute", "exchange")
UNTIMED = 1  # the first call of each kind compiles or starts its pipeline; the calls after it are steady


def _sync(values):
    for value in compat.tf().nest.flatten(values):
        np.asarray(value)


def _calls(model, backend, real, one):
    """The four timed calls (each waits for its result), on iterators over the datasets `real` and `one`."""
    tf = compat.tf()
    real, one = iter(real), iter(one)
    grads = [tf.ones(v.shape, tf.float32) for v in model.trainable_variables]
    total = backend.collective()

    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x, y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    compute = tf.function(lambda batch: backend.run_replicas(forward_backward, batch[:2]))
    batch = next(one)
    return {"step": lambda: _sync(model.train_function(real)),
            "one_batch": lambda: _sync(model.train_function(one)),
            "compute": lambda: _sync(compute(batch)),
            "exchange": (lambda: _sync(total(grads)[0][:1])) if backend.replicas > 1 else lambda: None}


def measure(model, backend, real, one, steps, progress=None):
    """This rank's median seconds per call of each kind, over `steps` calls after UNTIMED ones. `real` and
    `one`: the run's distributed batches, and one batch of them repeated. `progress()` after every call (the
    stall watchdog's)."""
    state = model.variables + model.optimizer.variables
    saved = [v.numpy() for v in state]
    calls = _calls(model, backend, real, one)
    times = {kind: [] for kind in KINDS}
    for kind in KINDS:  # each kind's calls back to back, as training's steps follow each other
        for i in range(UNTIMED + steps):
            start = time.perf_counter()
            calls[kind]()
            if i >= UNTIMED:
                times[kind].append(time.perf_counter() - start)
            if progress:
                progress()
    for v, value in zip(state, saved):
        v.assign(value)
    return {kind: statistics.median(t) for kind, t in times.items()}


def _parts(m):
    return {"input": m["step"] - m["one_batch"], "compute": m["compute"], "exchange": m["exchange"],
            "other": m["one_batch"] - m["compute"] - m["exchange"]}


def gather(backend, mine):
    """Every rank's measurement, in rank order (through the backend's collective: a sum of one-hot rows)."""
    tf = compat.tf()
    rows = np.zeros((backend.size, len(KINDS)), np.float32)
    rows[backend.rank] = [mine[k] for k in KINDS]
    summed = np.asarray(backend.collective()([tf.constant(rows.ravel())])[0]) / backend.local_replicas
    return [dict(zip(KINDS, map(float, row))) for row in summed.reshape(backend.size, len(KINDS))]


def summary(per_rank, run_step, steps, wall=None):
    """timing.json's `breakdown`: each part's median and range over the ranks, every rank's figures, and
    `wall`: the seconds the probe added to this rank's run (its calls, their compilation and the gather)."""
    parts = [_parts(m) for m in per_rank]
    median = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    step = statistics.median(m["step"] for m in per_rank)
    return {"calls": steps, "wall_seconds": wall, "seconds": median,
            "range": {k: [min(p[k] for p in parts), max(p[k] for p in parts)] for k in parts[0]},
            "step": step, "run_step": run_step,
            "step_against_run": step / run_step - 1 if run_step else None,
            "per_rank": [{**m, **_parts(m)} for m in per_rank]}
