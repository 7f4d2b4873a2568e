from collections import deque

import numpy as np
import pytest
from skimage.measure import label

from hpctrain.errors import UserError
from hpctrain.evaluate.table import format_table
from hpctrain.tasks.scores import (
    ISBI_THRESHOLDS,
    classification_metrics,
    foreground_restricted_scores,
    isbi_scores,
    multiclass_metrics,
    rand_error,
    segmentation_metrics,
    soft_dice,
    thin_borders,
)
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
    assert m["v_rand"] == 1.0 and m["v_info"] == pytest.approx(1.0)


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
    # Fiji's arithmetic on a slice without true cells is 0/0: V_Rand 0, and V_Info NaN, which drops every
    # threshold from its maximum, left at 0.
    assert m["v_rand"] == 0.0 and m["v_info"] == 0.0
    # Cells in truth, none predicted: cell Dice 0, and every true pair is split. For V_Rand, Fiji's flooding
    # of a proposal without cells makes the whole image one segment, which merges the two cells:
    # pairs (with itself) in a true cell 2*8^2 = 128, in both 128, in the segment 16^2 = 256 -> merge 1/2,
    # split 1, V_Rand 2/3; one segment has no entropy: V_Info 0.
    m = segmentation_metrics(np.zeros((1, 4, 5)), two_cells()[None])
    assert m["dice"]["cell"] == 0.0 and m["rand_error"] == 1.0
    assert m["v_rand"] == pytest.approx(2 / 3) and m["v_info"] == 0.0


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


def fiji_watershed(cell):
    """trainableSegmentation's WatershedTransform2D.apply() transcribed line by line (4-connectivity) for the
    image Fiji thins: 0 on cells, 255 on borders. Indexed [x, y] as ImageJ; returns [y, x] labels, 0 = dam."""
    img = np.where(cell, 0, 255).T
    size1, size2 = img.shape
    mask, wshed, init, inqueue = -2, 0, -1, -3
    tab = np.full(img.shape, init)
    # extractPixelValues (x outer, y inner), then Collections.sort by value, ties by creation order
    pixels = sorted((img[x, y], x * size2 + y, x, y) for x in range(size1) for y in range(size2))
    pixels = [(v, x, y) for v, _, x, y in pixels]

    def neighbours(x, y):  # Neighborhood2DC4
        around = ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1))
        return [(u, v) for u, v in around if 0 <= u < size1 and 0 <= v < size2]

    current_label, flag, fifo = 0, False, deque()
    index1 = index2 = current = 0
    h = 0
    while current < len(pixels) and h <= 255:
        h = pixels[current][0]
        for k in range(index1, len(pixels)):
            value, i, j = pixels[k]
            if value != h:
                index1 = k
                break
            tab[i, j] = mask
            if any(tab[u, v] >= wshed for u, v in neighbours(i, j)):
                fifo.append((i, j))
                tab[i, j] = inqueue
        while fifo:
            i, j = fifo.popleft()
            for u, v in neighbours(i, j):
                if tab[u, v] > 0:
                    if tab[i, j] == inqueue or (tab[i, j] == wshed and flag):
                        tab[i, j] = tab[u, v]
                    elif tab[i, j] > 0 and tab[i, j] != tab[u, v]:
                        tab[i, j], flag = wshed, False
                elif tab[u, v] == wshed:
                    if tab[i, j] == inqueue:
                        tab[i, j], flag = wshed, True
                elif tab[u, v] == mask:
                    tab[u, v] = inqueue
                    fifo.append((u, v))
        for k in range(index2, len(pixels)):  # new minima at level h
            value, i, j = pixels[k]
            if value != h:
                index2 = k
                break
            current += 1
            if tab[i, j] == mask:
                current_label += 1
                fifo.append((i, j))
                tab[i, j] = current_label
                while fifo:
                    for u, v in neighbours(*fifo.popleft()):
                        if tab[u, v] == mask:
                            fifo.append((u, v))
                            tab[u, v] = current_label
    return np.where(tab == init, 0, tab).T


def same_partition(a, b):
    """Equal up to renaming the labels, with 0 (watershed) where the other has 0."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def test_thin_borders_matches_fiji_flooding():
    # Random proposals from 1 pixel to 13x13, sparse to dense cells, noisy and blocky: the watershed lines and
    # the cell each border pixel joins are Fiji's exactly, ties in the queue order included.
    rng = np.random.default_rng(1)
    for case in range(300):
        h, w = rng.integers(1, 14, 2)
        cell = rng.random((h, w)) < rng.uniform(0.05, 0.95)
        if case % 3 == 0:
            cell = cell.repeat(2, axis=0).repeat(2, axis=1)
        assert same_partition(thin_borders(cell), fiji_watershed(cell)), cell.astype(int)


def test_thin_borders_by_hand():
    cells = np.ones((6, 6), bool)
    cells[:, 2:5] = False  # a 3-pixel border: the floods from both sides meet in its middle column
    expected = np.array([[1, 1, 1, 0, 2, 2]] * 6)
    assert same_partition(thin_borders(cells), expected)
    cells[:, 4] = True  # a 2-pixel border: Fiji's queue runs x outer, y inner, so the earlier column joins
    assert same_partition(thin_borders(cells), expected)  # its cell and the dam is the later one
    assert same_partition(thin_borders(cells.T), expected.T)
    assert np.array_equal(thin_borders(np.zeros((3, 4), bool)), np.ones((3, 4)))  # no cell: one segment
    # Diagonal cells: each border pixel next to two cells is a dam, and the corners, flooded from dams only, too.
    assert same_partition(thin_borders(np.eye(3, dtype=bool)), np.diag([1, 2, 3]))
    # Cells c1 at (x=0,y=2), c2 at (x=2,y=1). Queue (x outer): (0,1) joins c1; (1,1), next to c2 and after
    # (0,1), is a dam; (1,2) joins c1; (2,0) c2; (2,2), next to c2 and after (1,2), a dam. Then (0,0) joins c1
    # and (1,0), after it and next to c2's (2,0), is a dam. Taking y outer would give another partition.
    cells = np.zeros((3, 3), bool)
    cells[2, 0] = cells[1, 2] = True
    assert same_partition(thin_borders(cells), np.array([[1, 0, 2], [1, 0, 2], [1, 1, 0]]))


def test_v_rand_and_v_info_by_hand():
    # Truth 6x6: membrane column 2, cells A (columns 0-1, 12 px) and B (columns 3-5, 18 px); n = 30.
    # Proposal: membrane in columns 2-4, thinned to column 3, so A' = columns 0-2, B' = columns 4-5.
    # Inside true cells: A -> A' 12; B -> 6 on the dam (singletons), B' 12.
    truth = np.ones((6, 6), np.uint8)
    truth[:, 2] = 0
    prob = np.full((6, 6), 0.9)
    prob[:, 2:5] = 0.1
    # Pairs with itself: sum n_ij^2 = 144 + 144 + 6 singletons = 294, sum a_i^2 = 144 + 324 = 468,
    # sum b_j^2 = 144 + 144 + 6 = 294 -> merge 1, split 294/468 = 49/78, V_Rand = 2 * 49/78 / (1 + 49/78).
    v_rand = 98 / 127
    # Entropies (nats) over the 30 pixels: H(T) of 12, 18; H(S) of 12, 12 and 6 singletons; every segment lies
    # in one true cell, so H(S,T) = H(S) and I = H(T).
    h_t = -(0.4 * np.log(0.4) + 0.6 * np.log(0.6))
    h_s = -(2 * 0.4 * np.log(0.4) + 6 / 30 * np.log(1 / 30))
    scores = foreground_restricted_scores(label(truth, connectivity=1), thin_borders(prob > 0.5))
    assert scores["v_rand"] == pytest.approx(v_rand) and scores["v_rand_split"] == pytest.approx(49 / 78)
    assert scores["v_rand_merge"] == 1.0
    assert scores["v_info"] == pytest.approx(2 * h_t / (h_t + h_s))
    assert scores["v_info_split"] == pytest.approx(h_t / h_s) and scores["v_info_merge"] == pytest.approx(1.0)
    # Over Fiji's sweep: at 0.0 all is one cell (merges A and B), 0.1 to 0.8999999999999999 give this
    # proposal, 0.9999999999999999 none; the first best threshold is reported.
    m = isbi_scores(prob[None], truth[None])
    assert m == {"v_rand": pytest.approx(v_rand), "v_rand_threshold": 0.1, "thinned": True,
                 "v_info": pytest.approx(2 * h_t / (h_t + h_s)), "v_info_threshold": 0.1}


def test_v_rand_merge_and_split():
    truth = two_cells()
    true_cells = label(truth, connectivity=1)
    # Membrane missed: A and B (8 px each) in one segment. sum n_ij^2 = 128 = sum a_i^2, sum b_j^2 = 256.
    merged = foreground_restricted_scores(true_cells, thin_borders(np.ones((4, 5), bool)))
    assert merged["v_rand_merge"] == 0.5 and merged["v_rand_split"] == 1.0
    assert merged["v_rand"] == pytest.approx(2 / 3)
    assert merged["v_info"] == 0.0  # one segment: H(S) = 0, Fiji's V_Info 0
    # A false membrane across A at row 1 splits it: top 2 px, bottom 4 px, the 2 dam pixels singletons.
    # sum n_ij^2 = 4 + 16 + 2 + 64 (B) = 86 = sum b_j^2, sum a_i^2 = 128.
    cell = truth == 1
    cell[1, :2] = False
    split = foreground_restricted_scores(true_cells, thin_borders(cell))
    assert split["v_rand_merge"] == 1.0 and split["v_rand_split"] == pytest.approx(86 / 128)
    assert split["v_rand"] == pytest.approx(2 * 86 / 128 / (1 + 86 / 128))
    # Every segment inside one true cell: I = H(T), merge part 1, split part H(T) / H(S) < 1.
    assert split["v_info_merge"] == pytest.approx(1.0) and split["v_info_split"] < 0.9
    # One true cell: H(T) = 0, and Fiji's V_Info is 0 even for a perfect proposal; V_Rand is 1.
    one = foreground_restricted_scores(np.ones((4, 5), int), thin_borders(np.ones((4, 5), bool)))
    assert one["v_rand"] == 1.0 and one["v_info"] == 0.0


def test_thick_predicted_membrane_costs_nothing_after_thinning():
    # Predicted membrane in columns 1-3 around the true one (column 2): thinned to column 2, the proposal is the
    # truth. Without thinning (rand_error) the eaten cell columns are singletons: error 11/17.
    truth = two_cells()
    prob = np.zeros((4, 5))
    prob[:, [0, 4]] = 1
    m = segmentation_metrics(prob[None], truth[None])
    assert m["v_rand"] == 1.0 and m["v_info"] == pytest.approx(1.0) and m["rand_error"] == pytest.approx(11 / 17)


def test_isbi_threshold_sweep():
    assert len(ISBI_THRESHOLDS) == 11 and ISBI_THRESHOLDS[0] == 0.0 and ISBI_THRESHOLDS[-1] == 0.9999999999999999
    assert ISBI_THRESHOLDS[3] == 0.1 + 0.1 + 0.1  # Java's th += 0.1: 0.30000000000000004
    # Cells 0.95, membrane 0.65: up to 0.6 the membrane is cell (A, B merged: V_Rand 2/3, V_Info 0); from 0.7
    # to 0.8999999999999999 perfect; at 0.9999999999999999 nothing is cell (one segment again).
    truth = two_cells()[None]
    prob = np.where(truth == 1, 0.95, 0.65)
    m = segmentation_metrics(prob, truth)
    assert m["rand_error"] == pytest.approx(4 / 11)  # at 0.5: merged
    assert m["v_rand"] == 1.0 and m["v_rand_threshold"] == 0.7
    assert m["v_info"] == pytest.approx(1.0) and m["v_info_threshold"] == 0.7
    fixed = isbi_scores(prob, truth, thresholds=[0.5])
    assert fixed["v_rand"] == pytest.approx(2 / 3) and fixed["v_rand_threshold"] == 0.5 and fixed["v_info"] == 0
    # A float32 probability is compared in double, as Java does: float32(0.3) = 0.30000001 is above the
    # threshold 0.30000000000000004, so the membrane is cell there and the best threshold is 0.4.
    prob32 = np.where(truth == 1, 1, 0.3).astype(np.float32)
    m = isbi_scores(prob32, truth)
    assert m["v_rand"] == 1.0 and m["v_rand_threshold"] == 0.4


def test_isbi_scores_average_over_slices():
    # Macro average, as getMaximalVRandAfterThinning(.., perSliceAverage = true): slice 1 perfect, slice 2
    # merged (V_Rand 2/3, V_Info 0).
    truth = np.stack([two_cells(), two_cells()])
    prob = np.stack([two_cells(), np.ones((4, 5))]).astype(np.float32)
    m = isbi_scores(prob, truth)
    assert m["v_rand"] == pytest.approx((1 + 2 / 3) / 2) and m["v_info"] == pytest.approx(0.5)
    # A slice without true cells scores V_Rand 0 and V_Info NaN in Fiji: it halves V_Rand and leaves V_Info 0.
    m = isbi_scores(np.stack([two_cells(), np.zeros((4, 5))]), np.stack([two_cells(), np.zeros((4, 5))]))
    assert m["v_rand"] == pytest.approx(0.5) and m["v_info"] == 0.0


def test_bad_isbi_input():
    truth = two_cells()[None]
    with pytest.raises(UserError, match="stacks"):
        isbi_scores(np.zeros((1, 4, 4)), truth)
    with pytest.raises(UserError, match="thresholds"):
        isbi_scores(truth.astype(float), truth, thresholds=[])
    with pytest.raises(UserError, match="thresholds"):
        isbi_scores(truth.astype(float), truth, thresholds=[0.5, 1.5])
    with pytest.raises(UserError, match="one shape"):
        foreground_restricted_scores(truth[0], truth[0].T)


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
    rows = [line.split() for line in lines]
    # At the first threshold, 0, all is one segment, holding the one true cell whole: V_Rand 1; one true cell
    # has no entropy: V_Info 0 (Fiji's definition).
    assert ["v_rand", "1.0000"] in rows and ["v_rand_threshold", "0.0000"] in rows
    assert ["v_info", "0.0000"] in rows
    cls = format_table(classification_metrics(np.eye(2)[[0, 1, 1]], [0, 1, 0], ["a", "b"]))
    assert cls.splitlines()[-3:] == ["     a  b", "a    1  1", "b    0  1"]
    assert "n/a" in format_table(classification_metrics(np.eye(2)[[0, 0]], [0, 0]))


def test_boundary_scores_only_for_a_membrane_task_or_when_asked():
    rng = np.random.default_rng(0)
    truth = (rng.random((2, 32, 32)) < 0.8).astype(np.uint8)
    prob = rng.random((2, 32, 32))
    boundary = {"rand_error", "v_rand", "v_info", "v_rand_threshold", "v_info_threshold"}
    mito = segmentation_metrics(prob, truth, ("background", "mitochondrion"))
    assert not boundary & set(mito) and set(mito["dice"]) == {"background", "mitochondrion"}
    assert boundary <= set(segmentation_metrics(prob, truth, ("background", "mitochondrion"), boundaries=True))
    assert boundary <= set(segmentation_metrics(prob, truth))  # membrane, cell


def test_multiclass_scores_by_hand():
    truth = np.array([[[0, 1, 2, 2]]])
    probs = np.eye(3)[[[[0, 1, 1, 2]]]] * 0.8 + 0.2 / 3  # predicts 0, 1, 1, 2
    m = multiclass_metrics(probs, truth, ["bg", "a", "b"])
    assert m["dice"] == {"bg": 1.0, "a": pytest.approx(2 / 3), "b": pytest.approx(2 / 3)}
    assert m["iou"]["a"] == pytest.approx(0.5) and m["pixel_error"] == pytest.approx(0.25)
    # soft Dice of the 2-class form equals the general one on [1-p, p]
    p = np.random.default_rng(1).random((2, 5, 5))
    t = (p > 0.4).astype(np.uint8)
    assert multiclass_metrics(np.stack([1 - p, p], -1), t, ["x", "y"])["soft_dice"] == pytest.approx(soft_dice(p, t))
