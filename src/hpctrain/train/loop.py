"""The training loop: data -> model -> backend -> Keras fit -> outputs, in named phases. What differs
between backends is asked of the `Backend` (hpctrain.distribute.backends), what differs between models
and tasks of the model's entry (hpctrain.models, hpctrain.tasks); the loop names none of them. The run
folder (hpctrain.rundir.RunDir) is written by the chief only.
"""
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hpctrain import compat, models, optimizers
from hpctrain import spec as spec_mod
from hpctrain.atomic import write_text
from hpctrain.errors import TrainingFailed, UserError
from hpctrain.rundir import RunDir
from hpctrain.train import precision

# Exit code of a run stopped by SIGTERM/SIGUSR1 after saving its checkpoint: resume with --resume.
EXIT_RESUMABLE = 75  # EX_TEMPFAIL


@dataclass
class Result:
    run_dir: Path
    stopped_at: tuple | None  # (epoch, step) if a signal stopped the run
    timing: object            # hpctrain.train.timing.Timing


def train(spec, resume=False, force=False, backend=None):
    """Trains a JobSpec on this process's share of the job. On a multi-process job an error on any rank
    ends the whole job (the launcher sees the failed rank), so no peer waits for ever."""
    from hpctrain.distribute import backends

    backend = backend or backends.create(spec.distribute)
    watchdog = None
    if backend.size > 1:  # from here on, before the first collective
        from hpctrain.train.watchdog import StallWatchdog

        watchdog = StallWatchdog(RunDir(spec.output.dir), backend.rank, backend.size,
                                 spec.distribute.stall_timeout).start()
    try:
        return _train(spec, backend, resume, force, watchdog)
    except BaseException as e:
        if backend.size > 1 and not isinstance(e, SystemExit):
            if isinstance(e, (UserError, TrainingFailed)):
                detail = str(e)
            elif isinstance(e, compat.tf().errors.OpError):  # e.g. a peer's heartbeat timed out
                detail = compat.op_error_line(e, backend.cluster.hosts)
            else:
                detail = traceback.format_exc()
            print(f"hpctrain train: rank {backend.rank} failed: {detail}", file=sys.stderr, flush=True)
            backend.abort(2 if isinstance(e, UserError) else 1)
        raise
    finally:
        if watchdog is not None:
            watchdog.close()


def _train(spec, backend, resume, force, watchdog):
    from hpctrain.train import timing
    from hpctrain.train.watchdog import rank_hosts

    started = time.time()
    spec, growth = spec.on_workers(backend.replicas)
    entry = models.get(spec.model.name)
    data = _Data.check(spec, backend, entry)  # before anything is written
    _check_profile(spec.train, data.steps)
    if backend.is_chief:
        _say_rare_classes(spec, entry.task, data.info)
    _set_numerics(spec.train)
    lr = optimizers.scaled_learning_rate(spec.train.learning_rate, growth, spec.distribute.lr_scaling,
                                         spec.train.optimizer)
    shape = entry.input_shape(data.info["image_shape"], spec.data.tile)
    model, optimizer, state, logged = _build(spec, backend, entry, data, shape, lr)
    _check_target(spec.train, logged)
    run = _prepare_run_dir(spec, backend, resume, force)
    if backend.is_chief:
        info = data.info
        write_text(run.model, json.dumps({"input_shape": list(shape), "input_dtype": info["dtype"],
                                          "num_classes": info["num_classes"], "class_names": info["class_names"]}))
    start_step = _restore(state, optimizer, run, backend) if resume else 0
    fitted = _fit(spec, backend, entry.task, data, run, model, optimizer, state, start_step, resume, lr, watchdog)
    if fitted is None:  # resumed after the end (e.g. a requeued job that had finished)
        return Result(run.path, None, timing.Timing.read(run))
    timer, stopper = fitted
    report = timing.summary(timer, spec, backend, data.steps, wall=time.time() - started, model=model,
                            complete=not stopper.stopped_at, earlier=timing.unfinished(run) if resume else None,
                            rank_hosts=rank_hosts(run, backend.size) if backend.size > 1 else None,
                            validation_shards=data.validation_shards)
    if backend.is_chief:
        report.write(run)
        timing.plot_curves(run)
    return Result(run.path, stopper.stopped_at, report)


@dataclass
class _Data:
    """This process's data: where it is read, its counts, and how batches come."""
    path: Path
    info: dict
    steps: int                    # training steps per epoch
    natural_steps: int            # one pass over this process's shard
    validation_steps: int | None  # None: no validation
    validation_shards: int = 1    # see pipeline.validation_plan

    @classmethod
    def check(cls, spec, backend, entry):
        from hpctrain.data import pipeline

        path = _data_path(spec, backend)
        counts = pipeline.training_counts(path, spec.data.split, kind=entry.task.name, model=entry.name,
                                          size=backend.replicas, batch_size=spec.train.update_batch,
                                          tile=spec.data.tile)
        steps = min(counts.steps_per_epoch, spec.train.steps_per_epoch or counts.steps_per_epoch)
        if not (spec.train.validation and counts.val):
            return cls(path, counts.info, steps, counts.steps_per_epoch, None)
        local, processes = backend.local_replicas, backend.input_shard[1]
        plan = pipeline.validation_plan(counts, entry.task.validation_batch(spec.train.batch_size), local, processes)
        if backend.is_chief and plan.used < counts.val:
            print(f"hpctrain train: validation uses {plan.used} of {counts.val} samples (full batches for {local} "
                  "replicas)", flush=True)
        if backend.is_chief and plan.shards < processes:
            print(f"hpctrain train: {counts.val} validation samples do not split evenly over {processes} workers; "
                  "each validates all of them", flush=True)
        return cls(path, counts.info, steps, counts.steps_per_epoch, plan.steps, plan.shards)

    def training(self, spec, backend, step, one_batch=False):
        """This process's batches from global step `step` on, distributed by the backend (`one_batch`: the
        first of them, held in memory and repeated)."""
        from hpctrain.data import pipeline

        index, count = backend.input_shard
        B = spec.train.update_batch
        ds, _ = pipeline.train_dataset(self.path, spec.data.split, rank=index, size=count,
                                       batch_size=B * backend.local_replicas, seed=spec.train.seed,
                                       tile=spec.data.tile, augment=spec.data.augment, in_memory=spec.data.in_memory,
                                       start_epoch=step // self.natural_steps, start_step=step % self.natural_steps)
        return backend.distribute(ds.take(1).cache().repeat() if one_batch else ds, B)

    def validation(self, spec, backend, task):
        """Whole images of the validation subset (this process's share), distributed by the backend, or None."""
        if self.validation_steps is None:
            return None
        from hpctrain.data import pipeline

        val_batch = task.validation_batch(spec.train.batch_size)
        shard = backend.input_shard if self.validation_shards > 1 else (0, 1)
        val = pipeline.eval_dataset(self.path, spec.data.split, batch_size=val_batch * backend.local_replicas,
                                    shard=shard)
        return backend.distribute(val, val_batch)


def _data_path(spec, backend):
    path = spec.data.path
    if spec.data.stage_dir is not None:
        from hpctrain.data.staging import stage_to_node

        path = stage_to_node(path, spec.data.stage_dir, local_rank=backend.local_rank, barrier=backend.barrier)
    return path


def _prepare_run_dir(spec, backend, resume, force):
    run = RunDir(spec.output.dir)
    if backend.is_chief:
        if run.path.exists() and any(p != run.ranks for p in run.path.iterdir()) and not (resume or force):
            raise UserError(f"run folder {run.path} exists (use --resume to continue it or --force to replace it)")
        if force and not resume and run.path.exists():
            for path in run.path.iterdir():  # all but the heartbeats, which the ranks write already
                if path == run.ranks:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        run.path.mkdir(parents=True, exist_ok=True)
        write_text(run.spec, spec_mod.to_toml(spec))
    backend.barrier()
    return run


def _set_numerics(train_spec):
    """Seeds, determinism and the precision policy, before any layer exists."""
    tf, keras = compat.tf(), compat.keras()
    keras.utils.set_random_seed(train_spec.seed)
    if train_spec.deterministic:
        tf.config.experimental.enable_op_determinism()
        # Dropout then draws from a tf.random.Generator whose state is saved in checkpoints.
        keras.backend.experimental.enable_tf_random_generator()
    precision.apply(train_spec.precision)


def _build(spec, backend, entry, data, shape, lr):
    """The model, its wrapped optimizer and the checkpointable state, in the backend's scope, and the names
    of the metrics fit logs."""
    from hpctrain.train import checkpoint

    with backend.scope():
        model = models.build(spec.model, shape, data.info["num_classes"], data.info["dtype"])
        if spec.train.accumulate_steps > 1:
            from hpctrain.train.accumulate import accumulating

            model = accumulating(model, spec.train.accumulate_steps, backend.reduce_gradients)
        optimizer = backend.wrap_optimizer(optimizers.make(spec.train.optimizer, lr))
        loss, metrics = entry.task.compile_args(model, spec.train.loss, data.info["class_counts"])
        model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=spec.train.xla)
        optimizer.build(model.trainable_variables)
        state = checkpoint.TrainState(model, optimizer)
    names = ["loss", *(m if isinstance(m, str) else getattr(m, "name", None) or m.__name__ for m in metrics)]
    return model, optimizer, state, names + [f"val_{n}" for n in names] * (data.validation_steps is not None)


def _breakdown(spec, backend, data, model, watchdog):
    """Every rank's step-time breakdown (hpctrain.train.breakdown), on batches from the run's first step."""
    from hpctrain.train import breakdown

    progress = None
    if watchdog is not None:  # its calls are watched like training steps
        watchdog.on_train_begin()
        progress = lambda: watchdog.on_train_batch_end(None)  # noqa: E731
    mine = breakdown.measure(model, backend, data.training(spec, backend, 0), data.training(spec, backend, 0, True),
                             spec.train.breakdown_steps, progress)
    if watchdog is not None:
        watchdog.on_train_end()
    return breakdown.gather(backend, mine)


def _say_rare_classes(spec, task, info):
    from hpctrain.data.describe import rare_classes

    rare = rare_classes(info["class_names"], info["class_counts"])
    if rare:
        others = [name for name in task.losses if name != spec.train.loss]
        print(f"hpctrain train: rare class{'es' * (len(rare) > 1)} "
              + ", ".join(f"{name} ({100 * share:.1f} %)" for name, share in rare)
              + f"; train.loss is {spec.train.loss}" + (f" (also: {', '.join(others)})" if others else ""), flush=True)


def _check_profile(train_spec, steps_per_epoch):
    total = train_spec.epochs * steps_per_epoch
    if train_spec.profile and train_spec.profile_steps[1] > total:
        raise UserError(f"train.profile {train_spec.profile!r} ends after the run's last step ({total}: "
                        f"{train_spec.epochs} epoch{'s' * (train_spec.epochs > 1)} of {steps_per_epoch} steps)")


def _check_target(train_spec, logged):
    metric = train_spec.target_metric
    if metric is not None and metric not in logged:
        raise UserError(f"train.target_metric {metric!r} is not logged by this job; it logs {', '.join(logged)}")


def _restore(state, optimizer, run, backend):
    """The global step to continue from: the last checkpoint's, or 0 without one."""
    from hpctrain.train import checkpoint

    prefix = checkpoint.latest(run.last)
    if not prefix:
        return 0
    state.restore(prefix)
    step = int(optimizer.iterations.numpy())
    if backend.is_chief:
        print(f"hpctrain train: resuming from {prefix} at step {step}", flush=True)
    return step


def _fit(spec, backend, task, data, run, model, optimizer, state, start_step, resume, lr, watchdog):
    """Keras fit from `start_step` to the last epoch; (timer, stopper), or None when nothing was left."""
    from hpctrain.train import callbacks as cb

    steps = data.steps
    epoch, in_epoch = divmod(start_step, steps)
    if epoch >= spec.train.epochs:
        if backend.is_chief:
            print(f"hpctrain train: {run.path} already finished {spec.train.epochs} epochs", flush=True)
        return None
    validation = data.validation(spec, backend, task)
    # The schedule sets the rate of this step, also after a restore (the checkpoint holds the old one).
    schedule = cb.LearningRateSchedule(spec.train.learning_rate, lr, spec.distribute.lr_warmup_steps(steps),
                                       spec.train.lr_decay, total=spec.train.epochs * steps)
    schedule.apply(optimizer, start_step)
    stopper = cb.GracefulStop(backend, spec.distribute.sync_every)
    nonfinite = cb.FailOnNonFinite()
    timer = cb.StepTimer(spec.train.target_metric, spec.train.target_value, spec.train.stop_at_target)
    callbacks = [*backend.callbacks(), schedule, nonfinite, stopper, timer, *([watchdog] if watchdog else [])]
    with backend.output_dir(run.path) as where:
        where = RunDir(where)  # the chief's run folder, or a worker's temporary stand-in
        if backend.is_chief or backend.every_worker_saves:
            callbacks.append(cb.Checkpointer(state, state.manager(where.last), state.manager(where.best),
                                             spec.output.checkpoint_every,
                                             "val_loss" if validation is not None else "loss", stopper, nonfinite))
        if backend.is_chief:
            callbacks.append(cb.MetricsLog(run, run.history() if resume else ()))
            if spec.output.tensorboard or spec.train.profile:  # Keras counts the profiled steps from 1 in each fit
                callbacks.append(compat.keras().callbacks.TensorBoard(
                    str(run.tensorboard), profile_batch=spec.train.profile_steps or 0))
        # A progress bar on an interactive terminal; one line per epoch in logs and under launchers
        # (mpirun gives its ranks a pseudo-terminal even when the output goes to a file).
        interactive = sys.stdout.isatty() and backend.cluster.launcher == "single"
        fit = dict(validation_data=validation, validation_steps=data.validation_steps, callbacks=callbacks,
                   verbose=((1 if interactive else 2) if backend.is_chief else 0))
        if spec.distribute.timeline:
            backend.start_timeline(run.timeline)
        if in_epoch:  # finish the interrupted epoch first, from the exact step it stopped at
            model.fit(data.training(spec, backend, start_step), initial_epoch=epoch, epochs=epoch + 1,
                      steps_per_epoch=steps - in_epoch, **fit)
            epoch += 1
        if epoch < spec.train.epochs and not stopper.stopped_at and not nonfinite.bad_step:
            model.fit(data.training(spec, backend, epoch * steps), initial_epoch=epoch, epochs=spec.train.epochs,
                      steps_per_epoch=steps, **fit)
        if spec.distribute.timeline:
            backend.stop_timeline()
    if spec.train.breakdown_steps and not (stopper.stopped_at or nonfinite.bad_step):
        start = time.perf_counter()
        timer.breakdown = _breakdown(spec, backend, data, model, watchdog)
        timer.breakdown_seconds = time.perf_counter() - start
    if nonfinite.bad_step:
        e, s, value = nonfinite.bad_step
        raise TrainingFailed(f"loss became {value} at epoch {e}, step {s}; the last good checkpoint is kept "
                             f"in {run.checkpoints}")
    return timer, stopper
