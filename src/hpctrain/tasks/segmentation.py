"""Segmentation."""
from hpctrain import compat
from hpctrain.tasks.scores import NVIDIA_EPS


def dice_metric(eps=NVIDIA_EPS):
    """A tf_keras metric logged as `dice`: NVIDIA's 2-class soft Dice (see `soft_dice`) of sigmoid outputs,
    one value per sample that Keras averages over the batches."""
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


