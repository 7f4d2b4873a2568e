"""Evaluation: `metrics` (segmentation and classification scores, the Keras `dice` metric), `predict`
(tiled prediction, ISBI TIFF and class CSV outputs, TIFF input) and `tsne` (feature maps).

Import the submodules directly; nothing is imported here, so the CLI stays quick to start."""
