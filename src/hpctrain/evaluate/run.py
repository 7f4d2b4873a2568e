"""`hpctrain evaluate` and `hpctrain predict`: a trained model (run folder or checkpoint) on data."""
import json

import numpy as np

from hpctrain import compat, spec as spec_mod
from hpctrain.atomic import write_text
from hpctrain.errors import UserError


def load_model(run_or_checkpoint):
    """(spec, model) restored from a run folder (its best checkpoint, else its last) or a checkpoint."""
    from hpctrain import models
    from hpctrain.train import checkpoint

    run_dir, prefix = checkpoint.find_run(run_or_checkpoint)
    spec = spec_mod.load(run_dir / "spec.toml")
    try:
        arch = json.loads((run_dir / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir}: cannot read model.json: {e}") from None
    model = models.build(spec.model, tuple(arch["input_shape"]), arch["num_classes"], arch["input_dtype"])
    checkpoint.restore(compat.tf().train.Checkpoint(model=model), prefix, partial=True)
    return spec, model


def probability_fn(model):
    """batch (B,h,w,C) of pixels -> (B,h,w) P(class 1) for sigmoid or 2-class softmax U-Nets."""
    def predict(batch):
        out = model.predict_on_batch(np.asarray(batch))
        return out[..., 0] if out.shape[-1] == 1 else out[..., 1]
    return predict


def inference_tile(spec, height, width):
    """Whole slices when the U-Net can take them, else the training tile (blended with overlap)."""
    step = 2 ** (spec.model.depth - 1)
    if height % step == 0 and width % step == 0:
        return None
    return spec.data.tile or step * 16


def segment(spec, model, images):
    """(N,H,W[,C]) pixels -> (N,H,W) probabilities of class 1."""
    from hpctrain.tasks.tiling import predict_volume

    tile = inference_tile(spec, *images.shape[1:3])
    if tile is None:
        fn = probability_fn(model)
        return np.concatenate([fn(images[i:i + 1]) for i in range(len(images))]).astype(np.float32)
    return predict_volume(probability_fn(model), images, tile)


def evaluate(run_or_checkpoint, data=None, split=None, subset="val", out=None):
    """Metrics dict of a trained model on a split of an HDF5 dataset; JSON written to `out` if given."""
    from hpctrain.data.pipeline import eval_dataset
    from hpctrain.tasks import scores as metrics

    spec, model = load_model(run_or_checkpoint)
    data = data or spec.data.path
    split = split or spec.data.split
    xs, ys = [], []
    for x, y in eval_dataset(data, split, batch_size=8, subset=subset):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        raise UserError(f"{data}: split {split}/{subset} is empty")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if spec.model.name == "unet":
        result = metrics.segmentation_metrics(segment(spec, model, x), y[..., 0].astype(np.uint8))
    else:
        result = metrics.classification_metrics(model.predict(x, batch_size=256, verbose=0), y)
    result = {"model": spec.model.name, "data": str(data), "split": f"{split}/{subset}", **result}
    if out:
        write_text(out, json.dumps(result, indent=2))
    return result


def predict(run_or_checkpoint, input_path, out, force=False):
    """U-Net: TIFF stack in, float32 TIFF of P(non-membrane) out (ISBI format). CNN: IDX/HDF5 images in,
    CSV of classes and probabilities out."""
    from hpctrain.atomic import check_new_output
    from hpctrain.tasks import files as pred

    check_new_output(out, force)
    spec, model = load_model(run_or_checkpoint)
    pixels = pred.as_pixel_type(pred.read_input_volume(input_path), model.inputs[0].dtype.name)[..., None]
    if spec.model.name == "unet":
        pred.write_isbi_tiff(out, segment(spec, model, pixels))
    else:
        probs = model.predict(pixels, batch_size=256, verbose=0)
        pred.write_class_csv(out, probs, [str(i) for i in range(probs.shape[1])])
    return out


def tsne(run_or_checkpoint, data=None, out=None, count=2000):
    """t-SNE of the classifier's penultimate layer ('features') on held-out images, as PNG."""
    from hpctrain.data.pipeline import eval_dataset
    from hpctrain.evaluate.tsne import plot_tsne
    from hpctrain.train import checkpoint

    spec, model = load_model(run_or_checkpoint)
    if spec.model.name == "unet":
        raise UserError("t-SNE plots are for classifiers (mnist_cnn, lenet5), not the U-Net")
    xs, ys = [], []
    for x, y in eval_dataset(data or spec.data.path, spec.data.split, batch_size=256):
        xs.append(x.numpy())
        ys.append(y.numpy())
        if sum(map(len, xs)) >= count:
            break
    x, y = np.concatenate(xs)[:count], np.concatenate(ys)[:count]
    features = compat.keras().Model(model.inputs, model.get_layer("features").output).predict(x, verbose=0)
    out = out or checkpoint.find_run(run_or_checkpoint)[0] / "tsne.png"
    plot_tsne(features, y, out, f"t-SNE of {spec.model.name} features ({len(x)} held-out digits)")
    return out
