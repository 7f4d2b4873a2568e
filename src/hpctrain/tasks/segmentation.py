"""Segmentation (the U-Net on ISBI 2012): per-pixel classes, whole slices validated one at a time,
scored by Dice, IoU, Rand and pixel error, predicted as ISBI-format TIFF of P(class 1) (more than two
classes: a TIFF of each class's probability)."""
import numpy as np

from hpctrain import compat, tasks

NVIDIA_EPS = 1e-6  # the epsilon of NVIDIA UNet_Medical's dice_coef


class Segmentation(tasks.Task):
    name = "segmentation"
    # crossentropy+dice: cross-entropy + 1 - the soft Dice of the classes other than 0 (background), which
    # a rare class moves as much as a common one (NVIDIA UNet_Medical's loss averages the Dice of both
    # classes, which a large background keeps high); weighted_crossentropy:
    # each pixel's cross-entropy weighted by total / (classes x pixels of its class), from the packed balance.
    # Both keep a rare foreground (a few % of the pixels) from being learnt as "all background".
    losses = ("crossentropy", "crossentropy+dice", "weighted_crossentropy")

    def compile_args(self, model, loss="crossentropy", class_counts=None):
        keras = compat.keras()
        sigmoid = model.output_shape[-1] == 1  # one sigmoid channel: P(class 1)
        crossentropy = keras.losses.binary_crossentropy if sigmoid else keras.losses.sparse_categorical_crossentropy
        metrics = [dice_metric(), "binary_accuracy"] if sigmoid else ["accuracy"]
        if loss == "crossentropy":
            return (keras.losses.BinaryCrossentropy() if sigmoid else keras.losses.SparseCategoricalCrossentropy()), \
                metrics
        if loss == "crossentropy+dice":
            return _crossentropy_plus_dice(crossentropy), metrics
        if loss == "weighted_crossentropy":
            return _weighted_crossentropy(crossentropy, class_counts), metrics
        raise ValueError(loss)

    def validation_batch(self, batch_size):
        return 1  # whole slices, one per replica

    def outputs(self, model, images, tile=None):
        """(N,H,W[,C]) pixels -> (N,H,W) float32 P(class 1) of 2 classes, (N,H,W,K) probabilities of K > 2;
        overlapping tiles when `tile` is set."""
        def probabilities(batch):
            out = model.predict_on_batch(np.asarray(batch))
            channels = out.shape[-1]
            return out[..., channels - 1] if channels <= 2 else out  # sigmoid P(class 1), or softmax's

        if tile is None:
            return np.concatenate([probabilities(images[i:i + 1]) for i in range(len(images))]).astype(np.float32)
        from hpctrain.tasks.tiling import predict_volume

        return predict_volume(probabilities, images, tile)

    def score(self, outputs, targets, class_names=None, boundaries=None):
        from hpctrain.tasks.scores import SEGMENTATION_CLASSES, multiclass_metrics, segmentation_metrics

        truth = targets[..., 0] if targets.ndim == 4 else targets
        if outputs.ndim == 4:
            return multiclass_metrics(outputs, truth, class_names)
        return segmentation_metrics(outputs, truth.astype(np.uint8), class_names or SEGMENTATION_CLASSES,
                                    boundaries=boundaries)

    def write_prediction(self, path, outputs, class_names=None):
        from hpctrain.tasks.files import write_class_probabilities, write_isbi_tiff

        (write_class_probabilities if outputs.ndim == 4 else write_isbi_tiff)(path, outputs)


def soft_dice(y_true, y_pred, eps=NVIDIA_EPS, first=0):
    """NVIDIA's soft Dice (see `scores.soft_dice`) per sample, the mean over the classes from `first` on:
    y_true [B,H,W,1] class ids, y_pred [B,H,W,1] sigmoid P(class 1) or [B,H,W,C] softmax."""
    tf = compat.tf()
    n = tf.shape(y_pred)[0]
    p = tf.cast(y_pred, tf.float32)
    if p.shape[-1] == 1:
        p = tf.concat([1 - p, p], -1)
    classes = p.shape[-1]
    pred = tf.reshape(p, [n, -1, classes])
    target = tf.reshape(tf.one_hot(tf.cast(y_true[..., 0], tf.int32), classes), [n, -1, classes])
    inter = tf.reduce_sum(pred * target, axis=1)
    union = tf.reduce_sum(pred * pred + target * target, axis=1)
    return tf.reduce_mean(((2 * inter + eps) / (union + eps))[:, first:], axis=-1)


def dice_metric():
    """A tf_keras metric logged as `dice`: `soft_dice` of each sample, averaged by Keras over the batches."""
    def dice(y_true, y_pred):
        return soft_dice(y_true, y_pred)

    return dice


def _crossentropy_plus_dice(crossentropy):
    tf = compat.tf()

    def crossentropy_dice(y_true, y_pred):
        pixels = crossentropy(y_true, tf.cast(y_pred, tf.float32))
        return tf.reduce_mean(pixels, axis=[1, 2]) + 1 - soft_dice(y_true, y_pred, first=1)

    return crossentropy_dice


def _weighted_crossentropy(crossentropy, class_counts):
    tf = compat.tf()
    counts = np.asarray(class_counts, np.float64)
    weights = tf.constant(counts.sum() / (len(counts) * np.maximum(counts, 1)), tf.float32)

    def weighted_crossentropy(y_true, y_pred):
        pixels = crossentropy(y_true, tf.cast(y_pred, tf.float32))
        return tf.reduce_mean(tf.gather(weights, tf.cast(y_true[..., 0], tf.int32)) * pixels, axis=[1, 2])

    return weighted_crossentropy


TASK = tasks.register(Segmentation())
