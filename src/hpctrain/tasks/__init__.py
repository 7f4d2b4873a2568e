"""What a model learns and how it is judged. A task owns its loss and training metrics, how a trained
model's outputs are computed and scored, and the file its predictions are written to. A model names
its task (hpctrain.models); a dataset file's kind (hpctrain.data) is the name of the task it serves.

    task.losses                              -> names of the losses a job may choose (train.loss)
    task.compile_args(model, loss, class_counts) -> loss, metrics for Keras compile
    task.validation_batch(batch_size)        -> per-replica batch of validation
    task.outputs(model, images, tile)        -> what is scored and written (probabilities)
    task.score(outputs, targets, classes, boundaries) -> metrics dict (boundaries: segmentation's Rand/V_Info)
    task.write_prediction(path, outputs, classes)
"""
from hpctrain.registry import Registry


class Task:
    name = None
    has_features = False  # a penultimate 'features' layer worth a t-SNE map
    losses = ("crossentropy",)

    def compile_args(self, model, loss="crossentropy", class_counts=None):
        raise NotImplementedError

    def validation_batch(self, batch_size):
        return batch_size

    def outputs(self, model, images, tile=None):
        raise NotImplementedError

    def score(self, outputs, targets, class_names, boundaries=None):
        raise NotImplementedError

    def write_prediction(self, path, outputs, class_names):
        raise NotImplementedError


TASKS = Registry("task")
register, get = TASKS.add, TASKS.named  # a task instance, under its name


from hpctrain.tasks import classification, segmentation  # noqa: E402  (they register themselves)

SEGMENTATION, CLASSIFICATION = segmentation.TASK, classification.TASK
