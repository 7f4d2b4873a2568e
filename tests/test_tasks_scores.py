import numpy as np
import pytest

from hpctrain.errors import UserError
from hpctrain.evaluate.table import format_table
from hpctrain.tasks.scores import classification_metrics, rand_error, segmentation_metrics, soft_dice
from hpctrain.tasks.segmentation import dice_metric

pytestmark = pytest.mark.fast

RNG = np.random.default_rng(0)


def nvidia_soft_dice(prob, truth, eps=1e-6):
    """UNet_Medical runtime/losses.py verbatim in numpy: one-hot (N, pixels, 2), dice_coef over axis 1,
    mean over axis 0, dice loss = mean(1 - dice), score = 1 - loss."""
    n = len(prob)
    predict = np.stack([1 - prob, prob], -1).reshape(n, -1, 2)
    target = np.stack([1 - truth, truth], -1).reshape(n, -1, 2).astype(np.float64)
    intersection = np.sum(predict * target, axis=1)
    union = np.sum(predict * predict + target * target, axis=1)
    dice = np.mean((2 * intersection + eps) / (union + eps), axis=0)
    return 1 - np.mean(1 - dice)


def two_cells():
    """4x5: cells in columns 0-1 and 3-4, a membrane line in column 2."""
    truth = np.ones((4, 5), np.uint8)
    truth[:, 2] = 0
    return truth


def test_perfect_prediction():
    truth = RNG.integers(0, 2, (3, 16, 16)).astype(np.uint8)
    m = segmentation_metrics(truth.astype(np.float32), truth)
    assert m["dice"] == {"membrane": 1.0, "cell": 1.0} and m["iou"] == {"membrane": 1.0, "cell": 1.0}
    assert m["dice_mean"] == m["iou_mean"] == 1.0
    assert m["pixel_error"] == 0.0 and m["rand_error"] == 0.0
    assert m["soft_dice"] == pytest.approx(1.0)


def test_inverted_masks():
    truth = two_cells()[None]
    m = segmentation_metrics(1.0 - truth, truth)
    assert m["dice"] == {"membrane": 0.0, "cell": 0.0} and m["iou"] == {"membrane": 0.0, "cell": 0.0}
    assert m["pixel_error"] == 1.0
    assert m["rand_error"] == 1.0  # every predicted "cell" pixel lies on the true membrane, which is ignored


def test_empty_masks():
    # No cell anywhere: the absent class scores 1 in Dice, IoU and the soft Dice; no pair, no Rand error.
    truth = np.zeros((2, 8, 8), np.uint8)
    m = segmentation_metrics(np.zeros((2, 8, 8)), truth)
    assert m["dice"] == m["iou"] == {"membrane": 1.0, "cell": 1.0}
    assert m["soft_dice"] == 1.0 and m["pixel_error"] == 0.0 and m["rand_error"] == 0.0
    # Cells in truth, none predicted: cell Dice 0, and every true pair is split.
    m = segmentation_metrics(np.zeros((1, 4, 5)), two_cells()[None])
    assert m["dice"]["cell"] == 0.0 and m["rand_error"] == 1.0


def test_asymmetric_case_by_hand():
    truth = np.array([[[0, 0, 1, 1], [1, 1, 1, 1]]])
    prob = np.array([[[0.2, 0.7, 0.9, 0.4], [0.8, 0.6, 0.3, 0.9]]])
    # pred = [[0,1,1,0],[1,1,0,1]]
    # cell:     TP 4 ((0,2),(1,0),(1,1),(1,3)), FP 1 ((0,1)), FN 2 ((0,3),(1,2)) -> Dice 8/11, IoU 4/7
    # membrane: TP 1 ((0,0)),                   FP 2,         FN 1               -> Dice 2/5,  IoU 1/4
    # pixel error: 3 wrong of 8
    m = segmentation_metrics(prob, truth)
    assert m["dice"]["cell"] == pytest.approx(8 / 11) and m["iou"]["cell"] == pytest.approx(4 / 7)
    assert m["dice"]["membrane"] == pytest.approx(2 / 5) and m["iou"]["membrane"] == pytest.approx(1 / 4)
    assert m["dice_mean"] == pytest.approx((8 / 11 + 2 / 5) / 2)
    assert m["iou_mean"] == pytest.approx((4 / 7 + 1 / 4) / 2)
    assert m["pixel_error"] == pytest.approx(3 / 8)
    # Threshold 0.65 moves (1,1) (p = 0.6) to membrane: cell TP 3, FP 1, FN 3 -> Dice 6/10.
    assert segmentation_metrics(prob, truth, threshold=0.65)["dice"]["cell"] == pytest.approx(3 / 5)
    # p = 0.5 is membrane, as the argmax of a softmax [0.5, 0.5] is class 0.
    assert segmentation_metrics(np.full((1, 2, 2), 0.5), np.zeros((1, 2, 2)))["pixel_error"] == 0.0


def test_soft_dice_by_hand():
    # cell:     intersection 0.5*1 + 1*1 = 1.5, union (0.25 + 1) + (1 + 1) = 3.25
    # membrane: intersection 0,                union 0.25 + 0 = 0.25      (squares, not sums)
    prob, truth = np.array([[[0.5, 1.0]]]), np.array([[[1, 1]]])
    expected = ((3 + 1e-6) / (3.25 + 1e-6) + 1e-6 / (0.25 + 1e-6)) / 2
    assert soft_dice(prob, truth) == pytest.approx(expected, rel=1e-12)


def test_soft_dice_matches_nvidia_formula():
    prob = RNG.random((4, 12, 10))
    truth = (RNG.random((4, 12, 10)) > 0.3).astype(np.uint8)
    truth[2] = 0  # an image without cells: its cell Dice is eps/eps-ish, as in NVIDIA's batch mean
    expected = nvidia_soft_dice(prob, truth)
    assert segmentation_metrics(prob, truth)["soft_dice"] == pytest.approx(expected, rel=1e-12)
    assert not np.isclose(expected, segmentation_metrics(prob, truth)["dice_mean"])


def test_keras_dice_metric_matches_nvidia_formula():
    prob = RNG.random((3, 8, 8, 1)).astype(np.float32)
    truth = (RNG.random((3, 8, 8, 1)) > 0.5).astype(np.float32)
    dice = dice_metric()
    assert dice.__name__ == "dice"
    per_sample = dice(truth, prob).numpy()
    assert per_sample.shape == (3,)
    assert per_sample.mean() == pytest.approx(nvidia_soft_dice(prob[..., 0], truth[..., 0]), rel=1e-5)


def test_rand_error_merge_by_missing_membrane():
    # Truth: cells A, B of 8 pixels; the prediction misses the membrane line and merges them.
    # Ordered same-cell pairs: truth 2*8*7 = 112, prediction 16*15 = 240, in both 112.
    # Error = 1 - 112 / (0.5*112 + 0.5*240) = 4/11.
    truth = two_cells()
    assert rand_error(np.ones_like(truth), truth) == pytest.approx(4 / 11)


def test_rand_error_split_by_false_membrane():
    # Truth: one cell of 20 pixels; the prediction cuts it with a membrane line into 8 + 8 pixels,
    # the 4 line pixels counting as singletons. Pairs: truth 20*19 = 380, prediction 2*8*7 = 112, both 112.
    # Error = 1 - 112 / (0.5*380 + 0.5*112) = 67/123.
    truth = np.ones((4, 5), np.uint8)
    assert rand_error(two_cells(), truth) == pytest.approx(67 / 123)


def test_rand_error_predicted_membrane_joins_nothing():
    # Thick predicted membrane (columns 1-3) eats a column of each true cell. Those 8 pixels are
    # singletons, not one "membrane object" spanning both cells (that would give 0.5).
    # Pairs: truth 112; prediction 2 * 4*3 = 24; both 24. Error = 1 - 24 / (0.5*112 + 0.5*24) = 11/17.
    pred = np.zeros((4, 5), np.uint8)
    pred[:, [0, 4]] = 1
    assert rand_error(pred, two_cells()) == pytest.approx(11 / 17)


def test_rand_error_uses_4_connected_cells():
    # As Fiji: diagonal neighbours are separate cells, so this prediction is 3 singletons plus 6 membrane
    # singletons: no predicted pair, error 1. With 8-connectivity the diagonal would be one cell (33/39).
    assert rand_error(np.eye(3, dtype=np.uint8), np.ones((3, 3), np.uint8)) == 1.0


def test_rand_error_is_averaged_over_slices():
    truth = np.stack([two_cells(), two_cells()])
    prob = np.stack([two_cells(), np.ones((4, 5))]).astype(np.float32)
    assert segmentation_metrics(prob, truth)["rand_error"] == pytest.approx((0 + 4 / 11) / 2)


def test_bad_segmentation_input():
    truth = two_cells()[None]
    with pytest.raises(UserError, match="class ids"):
        segmentation_metrics(truth.astype(float), truth * 255)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        segmentation_metrics(truth * 2.0, truth)
    with pytest.raises(UserError, match="stacks"):
        segmentation_metrics(np.zeros((1, 4, 4)), truth)


def test_classification_metrics():
    labels = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 1, 1, 1, 2, 0])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    m = classification_metrics(probs, labels, ["zero", "one", "two"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == {"zero": pytest.approx(2 / 3), "one": pytest.approx(2 / 3), "two": None}
    with pytest.raises(UserError, match="class names"):
        classification_metrics(probs, labels, ["a", "b"])
    with pytest.raises(UserError, match="0..2"):
        classification_metrics(probs, labels + 2)


def test_format_table():
    seg = format_table(segmentation_metrics(np.array([[[0.2, 0.7, 0.9, 0.4]]]), np.array([[[0, 0, 1, 1]]])))
    lines = seg.splitlines()
    assert lines[0].split() == ["class", "dice", "iou"]
    assert lines[1].split() == ["membrane", "0.5000", "0.3333"]  # TP 1, FP 1, FN 1
    assert lines[3].split()[0] == "mean" and ["pixel_error", "0.5000"] in [line.split() for line in lines]
    cls = format_table(classification_metrics(np.eye(2)[[0, 1, 1]], [0, 1, 0], ["a", "b"]))
    assert cls.splitlines()[-3:] == ["     a  b", "a    1  1", "b    0  1"]
    assert "n/a" in format_table(classification_metrics(np.eye(2)[[0, 0]], [0, 0]))
