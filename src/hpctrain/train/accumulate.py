"""Gradient accumulation (train.accumulate_steps = k): a training step takes its worker's batch of k x B
samples as k micro-batches of B, one after the other, and makes one update from the mean of their
gradients: the update of one batch of k x B (the models have no batch statistics), while only one
micro-batch's activations are held. The workers exchange the accumulated gradient once per update."""
from hpctrain import compat


def accumulating(model, k, reduce_gradients):
    """`model` (functional tf_keras) with a training step over k micro-batches; the same layers and
    variables, so its checkpoints are the plain model's. reduce_gradients(list) -> list: the backend's
    exchange of the accumulated gradients (hpctrain.distribute.backends.Backend.reduce_gradients)."""
    tf, keras = compat.tf(), compat.keras()
    from tf_keras.src.engine import data_adapter

    class Accumulating(keras.Model):
        def train_step(self, data):
            x, y, _ = data_adapter.unpack_x_y_sample_weight(data)
            variables = self.trainable_variables
            scaled = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
            xs, ys = tf.split(x, k), tf.split(y, k)
            total = [tf.zeros_like(v) for v in variables]
            for i in range(k):  # unrolled: k is small and fixed
                with tf.GradientTape() as tape:
                    y_pred = self(xs[i], training=True)
                    loss = self.compute_loss(xs[i], ys[i], y_pred)
                    if scaled:
                        loss = self.optimizer.get_scaled_loss(loss)
                grads = tape.gradient(loss, variables)
                if scaled:
                    grads = self.optimizer.get_unscaled_gradients(grads)
                total = [t + g for t, g in zip(total, grads)]
                self.compute_metrics(xs[i], ys[i], y_pred, None)
            grads = reduce_gradients([t / k for t in total])
            self.optimizer.apply_gradients(zip(grads, variables))
            return self.get_metrics_result()

    return Accumulating(model.inputs, model.outputs, name=model.name)
