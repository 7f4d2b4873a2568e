"""`hpctrain evaluate`, `predict` and `plot tsne`: a trained model (run folder or checkpoint) on data.
What is computed, scored and written is the model's task's (hpctrain.tasks)."""
import json
from typing import NamedTuple

import numpy as np

from hpctrain import compat, models
from hpctrain import spec as spec_mod
from hpctrain.atomic import write_text
from hpctrain.errors import UserError


class Trained(NamedTuple):
    spec: object         # the run's JobSpec
    model: object        # the tf_keras model with the checkpoint's weights
    run: object          # its RunDir
    class_names: list    # of the dataset it was trained on (model.json)


def load_model(run_or_checkpoint):
    """The Trained model of a run folder (its best checkpoint, else its last) or of a checkpoint."""
    from hpctrain.train import checkpoint

    run, prefix = checkpoint.find_run(run_or_checkpoint)
    spec = spec_mod.load(run.spec)
    arch = run.model_info()
    model = models.build(spec.model, tuple(arch["input_shape"]), arch["num_classes"], arch["input_dtype"])
    checkpoint.restore(compat.tf().train.Checkpoint(model=model), prefix, partial=True)
    return Trained(spec, model, run, arch.get("class_names"))


def outputs(spec, model, images):
    """The task's outputs (e.g. probabilities) of images (N,H,W[,C]), tiled where the model needs it."""
    entry = models.get(spec.model.name)
    tile = entry.inference_tile(spec.model.settings, *images.shape[1:3], spec.data.tile)
    return entry.task.outputs(model, images, tile)


def _arrays(dataset, limit=None):
    xs, ys = [], []
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(y.numpy())
        if limit and sum(map(len, xs)) >= limit:
            break
    return (np.concatenate(xs)[:limit], np.concatenate(ys)[:limit]) if xs else (None, None)


def evaluate(run_or_checkpoint, data=None, split=None, subset="val", out=None, isbi=None):
    """Metrics dict of a trained model on a split of an HDF5 dataset, under the dataset's class names;
    `isbi` True asks for the ISBI boundary scores (default: where class 0 is a membrane). JSON written to
    `out` if given."""
    from hpctrain.data.dataset import open_dataset
    from hpctrain.data.pipeline import eval_dataset

    spec, model, _, trained_on = load_model(run_or_checkpoint)
    data = data or spec.data.path
    split = split or spec.data.split
    with open_dataset(data) as ds:
        class_names = list(ds.class_names)
    if trained_on and len(trained_on) != len(class_names):
        raise UserError(f"{data} has {len(class_names)} classes ({', '.join(class_names)}); the model was trained "
                        f"on {len(trained_on)} ({', '.join(trained_on)})")
    x, y = _arrays(eval_dataset(data, split, batch_size=8, subset=subset))
    if x is None:
        raise UserError(f"{data}: split {split}/{subset} is empty")
    task = models.get(spec.model.name).task
    result = task.score(outputs(spec, model, x), y, class_names, isbi)
    result = {"model": spec.model.name, "data": str(data), "split": f"{split}/{subset}", **result}
    if out:
        write_text(out, json.dumps(result, indent=2))
    return result


def predict(run_or_checkpoint, input_path, out, force=False):
    """A TIFF image or stack in; the task's prediction file out (U-Net: float32 TIFF of P(non-membrane),
    the ISBI format; classifiers: CSV of classes and probabilities)."""
    from hpctrain.atomic import check_new_output
    from hpctrain.tasks import files

    check_new_output(out, force)
    spec, model, _, class_names = load_model(run_or_checkpoint)
    pixels = files.as_pixel_type(files.read_input_volume(input_path), model.inputs[0].dtype.name)[..., None]
    task = models.get(spec.model.name).task
    task.write_prediction(out, outputs(spec, model, pixels), class_names)
    return out


def tsne(run_or_checkpoint, data=None, out=None, count=2000):
    """t-SNE of the classifier's penultimate layer ('features') on held-out images, as PNG."""
    from hpctrain.data.pipeline import eval_dataset
    from hpctrain.evaluate.tsne import plot_tsne

    spec, model, run, _ = load_model(run_or_checkpoint)
    if not models.get(spec.model.name).task.has_features:
        with_features = [name for name, m in models.MODELS.items() if m.task.has_features]
        raise UserError(f"t-SNE plots are for models with a features layer ({', '.join(with_features)}), "
                        f"not {spec.model.name}")
    x, y = _arrays(eval_dataset(data or spec.data.path, spec.data.split, batch_size=256), count)
    features = compat.keras().Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    out = out or run.tsne
    plot_tsne(features, y, out, f"t-SNE of {spec.model.name} features ({len(x)} held-out digits)")
    return out
