"""The segmentation losses a job chooses (train.loss), against their formulas by hand."""
import numpy as np
import pytest

from hpctrain import compat, models, spec
from hpctrain.errors import UserError
from hpctrain.tasks import SEGMENTATION

pytestmark = pytest.mark.fast


class _Sigmoid:
    output_shape = (None, 8, 8, 1)


def _case(seed=0):
    rng = np.random.default_rng(seed)
    truth = (rng.random((3, 8, 8, 1)) < 0.1).astype(np.float32)  # a rare foreground
    prob = rng.uniform(0.01, 0.99, (3, 8, 8, 1)).astype(np.float32)
    return truth, prob


def _bce(t, p):
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def test_weighted_crossentropy_weighs_each_class_by_its_rarity():
    truth, prob = _case()
    counts = [900, 100]
    loss, _ = SEGMENTATION.compile_args(_Sigmoid(), "weighted_crossentropy", counts)
    weights = np.array([1000 / (2 * 900), 1000 / (2 * 100)])
    expected = (weights[truth.astype(int)] * _bce(truth, prob)).mean(axis=(1, 2, 3))
    assert np.asarray(loss(truth, prob)) == pytest.approx(expected, rel=1e-4)


def test_crossentropy_plus_dice_is_crossentropy_plus_one_minus_the_foreground_soft_dice():
    truth, prob = _case(1)
    loss, _ = SEGMENTATION.compile_args(_Sigmoid(), "crossentropy+dice")
    p, t = prob[..., 0].reshape(3, -1), truth[..., 0].reshape(3, -1)  # the foreground's soft Dice alone
    dice = (2 * (p * t).sum(1) + 1e-6) / ((p * p + t * t).sum(1) + 1e-6)
    expected = _bce(truth, prob).mean(axis=(1, 2, 3)) + 1 - dice
    assert np.asarray(loss(truth, prob)) == pytest.approx(expected, rel=1e-4)


def test_the_default_loss_is_keras_crossentropy():
    truth, prob = _case(2)
    loss, metrics = SEGMENTATION.compile_args(_Sigmoid())
    assert float(loss(truth, prob)) == pytest.approx(_bce(truth, prob).mean(), rel=1e-4)
    assert isinstance(loss, compat.keras().losses.BinaryCrossentropy) and "binary_accuracy" in metrics


def test_a_loss_the_task_lacks_is_refused_by_the_spec():
    raw = {"name": "x", "data": {"path": "x.h5"}, "model": {"name": "mnist_cnn"}, "output": {"dir": "runs"},
           "train": {"batch_size": 8, "epochs": 1, "loss": "crossentropy+dice"}}
    with pytest.raises(UserError, match=r"train.loss 'crossentropy\+dice' is not a loss of classification"):
        spec.validate(raw)
    raw["model"] = {"name": "unet"}
    assert spec.validate(raw).train.loss == "crossentropy+dice"
    assert models.get("unet").task.losses == ("crossentropy", "crossentropy+dice", "weighted_crossentropy")
