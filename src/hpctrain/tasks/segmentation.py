"""Segmentation (the U-Net on ISBI 2012): per-pixel classes, whole slices validated one at a time,
scored by Dice, IoU, Rand and pixel error, predicted as ISBI-format TIFF of P(class 1)."""
import numpy as np

from hpctrain import compat, tasks

NVIDIA_EPS = 1e-6  # the epsilon of NVIDIA UNet_Medical's dice_coef


class Segmentation(tasks.Task):
    name = "segmentation"

    def compile_args(self, model):
        keras = compat.keras()
        if model.output_shape[-1] == 1:  # one sigmoid channel: P(class 1)
            return keras.losses.BinaryCrossentropy(), [dice_metric(), "binary_accuracy"]
        return keras.losses.SparseCategoricalCrossentropy(), ["accuracy"]

    def validation_batch(self, batch_size):
        return 1  # whole slices, one per replica

    def outputs(self, model, images, tile=None):
        """(N,H,W[,C]) pixels -> (N,H,W) float32 P(class 1); overlapping tiles when `tile` is set."""
        def probabilities(batch):
            out = model.predict_on_batch(np.asarray(batch))
            return out[..., 0] if out.shape[-1] == 1 else out[..., 1]

        if tile is None:
            return np.concatenate([probabilities(images[i:i + 1]) for i in range(len(images))]).astype(np.float32)
        from hpctrain.tasks.tiling import predict_volume

        return predict_volume(probabilities, images, tile)

    def score(self, outputs, targets, class_names=None):
        from hpctrain.tasks.scores import segmentation_metrics

        truth = targets[..., 0] if targets.ndim == 4 else targets
        return segmentation_metrics(outputs, truth.astype(np.uint8), *([class_names] if class_names else []))

    def write_prediction(self, path, outputs, class_names=None):
        from hpctrain.tasks.files import write_isbi_tiff

        write_isbi_tiff(path, outputs)


def dice_metric(eps=NVIDIA_EPS):
    """A tf_keras metric logged as `dice`: NVIDIA's 2-class soft Dice (see `scores.soft_dice`) of sigmoid
    outputs, one value per sample that Keras averages over the batches."""
    tf = compat.tf()

    def dice(y_true, y_pred):
        n = tf.shape(y_pred)[0]
        p = tf.reshape(tf.cast(y_pred, tf.float32), [n, -1])
        t = tf.reshape(tf.cast(y_true, tf.float32), [n, -1])
        pred, target = tf.stack([1 - p, p], -1), tf.stack([1 - t, t], -1)
        inter = tf.reduce_sum(pred * target, axis=1)
        union = tf.reduce_sum(pred * pred + target * target, axis=1)
        return tf.reduce_mean((2 * inter + eps) / (union + eps), axis=-1)

    return dice


TASK = tasks.register(Segmentation())
