"""The training loop: data -> model -> backend -> Keras fit -> outputs. Backend-agnostic: everything that
differs between Horovod and tf.distribute sits behind `hpctrain.distribute.backends.Backend`.

Run folder (written by the chief only):
    spec.toml  model.json  checkpoints/{last,best}/  metrics.csv  metrics.jsonl  timing.json  curves.png  tensorboard/
"""
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from hpctrain import compat, spec as spec_mod
from hpctrain.atomic import write_text
from hpctrain.errors import TrainingFailed, UserError

# Exit code of a run stopped by SIGTERM/SIGUSR1 after saving its checkpoint: resume with --resume.
EXIT_RESUMABLE = 75  # EX_TEMPFAIL


@dataclass
class Result:
    run_dir: Path
    stopped_at: tuple | None  # (epoch, step) if a signal stopped the run
    timing: dict


def train(spec, resume=False, force=False, backend=None):
    """Trains a JobSpec on this process's share of the job. On a multi-process job an error on any rank
    ends the whole job (the launcher sees the failed rank), so no peer waits for ever."""
    from hpctrain.distribute import backends

    backend = backend or backends.create(spec.distribute)
    try:
        return _train(spec, backend, resume, force)
    except BaseException as e:
        if backend.size > 1 and not isinstance(e, SystemExit):
            if isinstance(e, (UserError, TrainingFailed)):
                detail = str(e)
            elif isinstance(e, compat.tf().errors.OpError):  # e.g. a peer's heartbeat timed out
                detail = f"{type(e).__name__}: {e.message.strip().splitlines()[0][:500]}"
            else:
                detail = traceback.format_exc()
            print(f"hpctrain train: rank {backend.rank} failed: {detail}", file=sys.stderr, flush=True)
            backend.abort(2 if isinstance(e, UserError) else 1)
        raise


def _prepare_run_dir(spec, backend, resume, force):
    run_dir = spec.output.dir
    if backend.is_chief:
        if run_dir.exists() and any(run_dir.iterdir()) and not (resume or force):
            raise UserError(f"run folder {run_dir} exists (use --resume to continue it or --force to replace it)")
        if force and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "spec.toml", spec_mod.to_toml(spec))
    backend.barrier()
    return run_dir


def _seed(train_spec):
    tf, keras = compat.tf(), compat.keras()
    keras.utils.set_random_seed(train_spec.seed)
    if train_spec.deterministic:
        tf.config.experimental.enable_op_determinism()
        # Dropout then draws from a tf.random.Generator whose state is saved in checkpoints.
        keras.backend.experimental.enable_tf_random_generator()
    if train_spec.precision == "mixed":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
        keras.mixed_precision.set_global_policy(policy)


def make_optimizer(name, learning_rate):
    opt = compat.keras().optimizers
    if name == "adam":
        return opt.Adam(learning_rate)
    return opt.SGD(learning_rate, momentum=0.9 if name == "momentum" else 0.0)


def scaled_learning_rate(base, replicas, rule):
    return base * {"linear": replicas, "sqrt": replicas ** 0.5, "none": 1}[rule]


def compile_model(model, spec, optimizer, kind):
    from hpctrain.tasks.segmentation import dice_metric

    keras = compat.keras()
    if kind == "segmentation":
        if spec.model.output == "sigmoid":
            loss, metrics = keras.losses.BinaryCrossentropy(), [dice_metric(), "binary_accuracy"]
        else:
            loss, metrics = keras.losses.SparseCategoricalCrossentropy(), ["accuracy"]
    else:
        loss, metrics = keras.losses.SparseCategoricalCrossentropy(), ["accuracy"]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=spec.train.xla)


def _data_path(spec, backend):
    path = spec.data.path
    if spec.data.stage_dir is not None:
        from hpctrain.data.staging import stage_to_node

        path = stage_to_node(path, spec.data.stage_dir, local_rank=backend.local_rank, barrier=backend.barrier)
    return path


def _train(spec, backend, resume, force):
    from hpctrain import models
    from hpctrain.data import pipeline
    from hpctrain.train import callbacks as cb, checkpoint, timing

    keras = compat.keras()
    started = time.time()
    path = _data_path(spec, backend)
    info = pipeline.dataset_info(path)
    wanted = "segmentation" if spec.model.name in models.SEGMENTATION else "classification"
    if info["kind"] != wanted:
        raise UserError(f"{path} holds a {info['kind']} dataset; model {spec.model.name} needs {wanted}")
    sizes = info["splits"].get(spec.data.split)
    if sizes is None:
        raise UserError(f"{path} has no split {spec.data.split!r} (it has {', '.join(info['splits'])})")
    B = spec.train.batch_size
    index, count = backend.input_shard
    process_batch = B * backend.local_replicas
    # One pass over this process's shard; the data position follows from the global step count.
    natural_steps = sizes["train"] // count // process_batch
    if natural_steps == 0:
        raise UserError(f"world size x batch larger than the split: {backend.replicas} x {B} > {sizes['train']} "
                        f"training samples in split {spec.data.split!r}")
    height, width = info["image_shape"][:2]
    if spec.data.tile and spec.data.tile > min(height, width):
        raise UserError(f"data.tile {spec.data.tile} does not fit the {height}x{width} images of {path}")
    run_dir = _prepare_run_dir(spec, backend, resume, force)  # only once the data is known to be good
    _seed(spec.train)

    replicas = backend.replicas
    base_lr = spec.train.learning_rate
    lr = scaled_learning_rate(base_lr, replicas, spec.distribute.lr_scaling)
    with backend.scope():
        shape = ((spec.data.tile, spec.data.tile) if spec.data.tile else tuple(info["image_shape"][:2])) + (
            info["channels"],)
        if spec.model.name == "unet":
            shape = (None, None, info["channels"])  # fully convolutional: tiles train, whole slices validate
        model = models.build(spec.model, shape, info["num_classes"], info["dtype"])
        if backend.is_chief:  # what inference needs to rebuild the model
            write_text(run_dir / "model.json", json.dumps({"input_shape": list(shape), "input_dtype": info["dtype"],
                                                           "num_classes": info["num_classes"],
                                                           "class_names": info["class_names"]}))
        optimizer = backend.wrap_optimizer(make_optimizer(spec.train.optimizer, lr))
        compile_model(model, spec, optimizer, info["kind"])
        optimizer.build(model.trainable_variables)
        state = checkpoint.TrainState(model, optimizer)

    ckpt_dir = run_dir / "checkpoints"
    start_step = 0
    if resume and (prefix := checkpoint.latest(ckpt_dir / "last")):
        state.restore(prefix)
        start_step = int(optimizer.iterations.numpy())
        if backend.is_chief:
            print(f"hpctrain train: resuming from {prefix} at step {start_step}", flush=True)


    def data(step):
        """This process's batches from global step `step` on."""
        ds, _ = pipeline.train_dataset(path, spec.data.split, rank=index, size=count, batch_size=process_batch,
                                       seed=spec.train.seed, tile=spec.data.tile, augment=_augment(spec),
                                       in_memory=spec.data.in_memory, start_epoch=step // max(natural_steps, 1),
                                       start_step=step % max(natural_steps, 1))
        return backend.distribute(ds, B)

    ds = data(start_step)
    steps = min(natural_steps, spec.train.steps_per_epoch or natural_steps)
    validation, validation_steps = None, None
    if spec.train.validation and sizes["val"]:
        # Whole slices validate one per replica; a strategy with several local replicas needs full
        # batches, so it leaves out the last n % (batch x local replicas) samples.
        val_batch = 1 if info["kind"] == "segmentation" else B
        local = backend.local_replicas
        validation_steps = sizes["val"] // (val_batch * local) if local > 1 else -(-sizes["val"] // val_batch)
        if validation_steps == 0:
            raise UserError(f"{sizes['val']} validation samples cannot fill {local} replicas x batch {val_batch}")
        if local > 1 and sizes["val"] % (val_batch * local) and backend.is_chief:
            print(f"hpctrain train: validation uses {validation_steps * val_batch * local} of {sizes['val']} "
                  f"samples (full batches for {local} replicas)", flush=True)
        val = pipeline.eval_dataset(path, spec.data.split, batch_size=val_batch * local)
        validation = backend.distribute(val, val_batch)

    # The rate follows from the spec and the step, also after a restore (the checkpoint holds the old one).
    ramp = cb.LearningRateRamp(base_lr, lr, int(round(spec.distribute.warmup_epochs * steps)))
    ramp.apply(optimizer, start_step)
    stopper = cb.GracefulStop(backend, spec.distribute.sync_every)
    nonfinite = cb.FailOnNonFinite()
    timer = cb.StepTimer(spec.train.target_metric, spec.train.target_value)
    callbacks = [*backend.callbacks(), ramp, nonfinite, stopper, timer]
    every_worker_saves = backend.name in ("mirrored", "multiworker")
    with backend.output_dir(ckpt_dir) as where:
        where = Path(where)
        if backend.is_chief or every_worker_saves:
            callbacks.append(cb.Checkpointer(state, state.manager(where / "last"), state.manager(where / "best"),
                                             spec.output.checkpoint_every,
                                             "val_loss" if validation is not None else "loss", stopper, nonfinite))
        if backend.is_chief:
            callbacks.append(cb.MetricsLog(run_dir, _history(run_dir) if resume else ()))
            if spec.output.tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), profile_batch=0))
        # A progress bar on an interactive terminal; one line per epoch in logs and under launchers
        # (mpirun gives its ranks a pseudo-terminal even when the output goes to a file).
        interactive = sys.stdout.isatty() and backend.cluster.launcher == "single"
        verbose = (1 if interactive else 2) if backend.is_chief else 0

        epoch, in_epoch = divmod(start_step, steps)
        if epoch >= spec.train.epochs:  # resumed after the end (e.g. a requeued job that had finished)
            if backend.is_chief:
                print(f"hpctrain train: {run_dir} already finished {spec.train.epochs} epochs", flush=True)
            return Result(run_dir, None, timing.read(run_dir))
        if in_epoch:  # finish the interrupted epoch first, from the exact step it stopped at
            model.fit(ds, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps - in_epoch,
                      validation_data=validation, validation_steps=validation_steps, callbacks=callbacks, verbose=verbose)
            epoch += 1
            ds = data(epoch * steps)
        if epoch < spec.train.epochs and not stopper.stopped_at and not nonfinite.bad_step:
            model.fit(ds, initial_epoch=epoch, epochs=spec.train.epochs, steps_per_epoch=steps,
                      validation_data=validation, validation_steps=validation_steps, callbacks=callbacks, verbose=verbose)

    if nonfinite.bad_step:
        e, s, value = nonfinite.bad_step
        raise TrainingFailed(f"loss became {value} at epoch {e}, step {s}; the last good checkpoint is kept "
                             f"in {ckpt_dir}")
    report = timing.summary(timer, spec, backend, steps, wall=time.time() - started, model=model,
                            complete=not stopper.stopped_at, earlier=timing.unfinished(run_dir) if resume else None)
    if backend.is_chief:
        timing.write(run_dir, report)
        timing.plot_curves(run_dir)
    return Result(run_dir, stopper.stopped_at, report)


def _augment(spec):
    if not spec.data.augment.enabled:
        return None
    from hpctrain.data.augment import AugmentConfig

    a = spec.data.augment
    return AugmentConfig(rotation_range=a.rotation, width_shift_range=a.shift, height_shift_range=a.shift,
                         shear_range=a.shear, zoom_range=a.zoom, horizontal_flip=a.horizontal_flip,
                         vertical_flip=a.vertical_flip, elastic=a.elastic)


def _history(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
