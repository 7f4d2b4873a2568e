"""Classification (the MNIST CNN and LeNet-5): one class per image, scored by accuracy and the
confusion matrix, predicted as a CSV of classes and probabilities."""
from hpctrain import compat, tasks


class Classification(tasks.Task):
    name = "classification"
    has_features = True

    def compile_args(self, model, loss="crossentropy", class_counts=None):
        return compat.keras().losses.SparseCategoricalCrossentropy(), ["accuracy"]

    def outputs(self, model, images, tile=None):
        return model.predict(images, batch_size=256, verbose=0)

    def score(self, outputs, targets, class_names=None, boundaries=None):
        from hpctrain.tasks.scores import classification_metrics

        return classification_metrics(outputs, targets, class_names)

    def write_prediction(self, path, outputs, class_names=None):
        from hpctrain.tasks.files import write_class_csv

        write_class_csv(path, outputs, class_names or [str(i) for i in range(outputs.shape[1])])


TASK = tasks.register(Classification())
