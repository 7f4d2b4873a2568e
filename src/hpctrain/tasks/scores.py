"""Scores for segmentation (U-Net on ISBI 2012) and classification (MNIST), in NumPy.

Segmentation inputs: `prob` (N,H,W) = P(class 1) in [0,1] (a softmax caller passes channel 1) and `truth`
(N,H,W) of class ids, 0 = membrane, 1 = cell interior. A pixel is predicted as cell when prob > threshold,
which at 0.5 is the argmax of the 2-class softmax. The final ISBI 2012 scores V_Rand and V_Info, after Fiji's
border thinning and over its threshold sweep, are in `isbi_scores`.
"""
import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.metrics import adapted_rand_error
from sklearn.metrics import confusion_matrix

from hpctrain.errors import UserError
from hpctrain.tasks.segmentation import NVIDIA_EPS

SEGMENTATION_CLASSES = ("membrane", "cell")
BOUNDARY_CLASS = "membrane"  # class 0 of this name: cells separated by membranes, scored by Rand and V_Info


def _java_threshold_sweep(low, high, step):
    """The thresholds of Fiji's `for (double th = low; th <= high; th += step)`, with its accumulated rounding."""
    thresholds, th = [], low
    while th <= high:
        thresholds.append(th)
        th += step
    return tuple(thresholds)


# The official ISBI 2012 evaluation (imagej.github.io, Segmentation_evaluation_after_border_thinning_-_Script.mw)
# calls getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true) and getMaximalVInfoAfterThinning(0.0, 1.0, 0.1) for a
# probability proposal: 11 thresholds, 0.0, 0.1, 0.2, 0.30000000000000004, ..., 0.9999999999999999 (its
# "Binary proposal" option sweeps 0.0 only).
ISBI_THRESHOLDS = _java_threshold_sweep(0.0, 1.0, 0.1)


def segmentation_metrics(prob, truth, class_names=SEGMENTATION_CLASSES, threshold=0.5,
                         isbi_thresholds=ISBI_THRESHOLDS, boundaries=None):
    """Scores a stack of probability maps against its class-id masks.

    - dice, iou: per class over all pixels of the stack, from the thresholded prediction; a class absent
      from both prediction and truth scores 1 (nothing to find, nothing found). dice_mean, iou_mean: their mean.
    - soft_dice: NVIDIA UNet_Medical's 2-class soft Dice on the probabilities (see `soft_dice`).
    - pixel_error: 1 - pixel accuracy.
    - rand_error: a foreground-restricted adapted Rand error at `threshold`, mean over slices (see `rand_error`).
    - v_rand, v_info: the final ISBI 2012 scores (higher is better, 1 = perfect), after Fiji's border thinning and
      maximised over `isbi_thresholds`; v_rand_threshold, v_info_threshold: where (see `isbi_scores`).
    The last three judge cells separated by membranes: they are scored where `boundaries` is true, by default
    when class 0 is named "membrane" (the ISBI packers' names; `hpctrain evaluate --isbi` asks for them).
    """
    prob, truth = _check_segmentation(prob, truth)
    if len(class_names) != 2:
        raise UserError(f"segmentation has 2 classes, got class names {list(class_names)}")
    pred = (prob > threshold).astype(np.uint8)
    cm = confusion_matrix(truth.ravel(), pred.ravel(), labels=[0, 1])
    dice, iou = _overlaps(cm, class_names)
    scores = {
        "n_images": len(prob),
        "threshold": float(threshold),
        "dice": dice,
        "dice_mean": float(np.mean(list(dice.values()))),
        "iou": iou,
        "iou_mean": float(np.mean(list(iou.values()))),
        "soft_dice": soft_dice(prob, truth),
        "pixel_error": float(1 - np.trace(cm) / cm.sum()),
    }
    if boundaries if boundaries is not None else class_names[0] == BOUNDARY_CLASS:
        scores["rand_error"] = float(np.mean([rand_error(p, t) for p, t in zip(pred, truth)]))
        isbi = isbi_scores(prob, truth, isbi_thresholds)
        scores.update({k: isbi[k] for k in ("v_rand", "v_rand_threshold", "v_info", "v_info_threshold")})
    return scores


def multiclass_metrics(probs, truth, class_names):
    """Scores (N,H,W,K) class probabilities against (N,H,W) class ids, predicting the most probable class:
    dice, iou per class (as in `segmentation_metrics`) and their means, soft_dice over the K classes, and
    pixel_error."""
    probs, truth = np.asarray(probs), np.asarray(truth)
    if probs.ndim != 4 or probs.shape[:3] != truth.shape or probs.shape[3] != len(class_names):
        raise UserError(f"probabilities {probs.shape} and truth {truth.shape} do not fit {len(class_names)} classes")
    cm = confusion_matrix(truth.ravel(), probs.argmax(-1).ravel(), labels=range(len(class_names)))
    dice, iou = _overlaps(cm, class_names)
    return {"n_images": len(probs), "dice": dice, "dice_mean": float(np.mean(list(dice.values()))),
            "iou": iou, "iou_mean": float(np.mean(list(iou.values()))),
            "soft_dice": _soft_dice_onehot(probs, np.eye(len(class_names))[truth]),
            "pixel_error": float(1 - np.trace(cm) / cm.sum())}


def _overlaps(cm, class_names):
    """Dice and IoU of each class from a confusion matrix; a class absent from truth and prediction scores 1."""
    dice, iou = {}, {}
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        wrong = cm[c, :].sum() + cm[:, c].sum() - 2 * tp  # false negatives + false positives
        dice[name] = float(2 * tp / (2 * tp + wrong)) if tp + wrong else 1.0
        iou[name] = float(tp / (tp + wrong)) if tp + wrong else 1.0
    return dice, iou


def _soft_dice_onehot(pred, target, eps=NVIDIA_EPS):
    """NVIDIA's soft Dice of (N,H,W,K) probabilities and one-hot truth: per image and class, then the mean."""
    pred, target = pred.reshape(len(pred), -1, pred.shape[-1]), target.reshape(len(target), -1, target.shape[-1])
    inter = np.sum(pred * target, axis=1)
    union = np.sum(pred * pred + target * target, axis=1)
    return float(np.mean((2 * inter + eps) / (union + eps)))


def soft_dice(prob, truth, eps=NVIDIA_EPS):
    """Mean 2-class soft Dice as NVIDIA DeepLearningExamples reports it for UNet_Medical (0.89 on ISBI 2012):
    TensorFlow2/Segmentation/UNet_Medical/runtime/losses.py `dice_coef` on the one-hot [1-p, p] and [1-t, t]:
    per image and class (2*sum(p*t) + 1e-6) / (sum(p*p + t*t) + 1e-6) over the pixels, averaged over the
    images ("over batch"), then over the classes (its eval_dice_score = 1 - mean dice loss)."""
    p, t = np.asarray(prob, np.float64), np.asarray(truth, np.float64)
    return _soft_dice_onehot(np.stack([1 - p, p], -1), np.stack([1 - t, t], -1), eps)


def rand_error(pred, truth):
    """Foreground-restricted adapted Rand error of one slice, after the ISBI 2012 challenge's first metric (Fiji's
    trainableSegmentation RandError, Arganda-Carreras et al. 2015): the cells of truth and prediction are
    their 4-connected components of class 1. `adapted_rand_error` ignores truth label 0 (membrane); predicted
    membrane pixels become singletons, so they join no cell, as Fiji prunes the prediction's zero component.
    A slice without any pair of pixels in the same true or predicted cell scores 0 (no pair to get wrong).
    Unlike the final leaderboard (`isbi_scores`), borders are not thinned and the threshold is not optimised.
    Unlike Fiji's RandError.java (`getForegroundRestrictedRandIndexStatsN2`), the pairs are of two distinct
    pixels (skimage) where Fiji counts N^2 pairs, each pixel with itself too, and Fiji sums the pair counts of
    the slices where `segmentation_metrics` averages this error over them."""
    true_cells = label(truth == 1, connectivity=1)
    pred_cells = label(pred == 1, connectivity=1)
    membrane = pred_cells == 0
    pred_cells[membrane] = pred_cells.max() + 1 + np.arange(np.count_nonzero(membrane))
    with np.errstate(divide="ignore", invalid="ignore"):
        error = adapted_rand_error(true_cells, pred_cells)[0]
    return 0.0 if np.isnan(error) else float(error)


def isbi_scores(prob, truth, thresholds=ISBI_THRESHOLDS):
    """The final ISBI 2012 scores V_Rand (thinned) and V_Info (thinned) of a stack, as Fiji's trainableSegmentation
    computes them (Arganda-Carreras et al. 2015, Front. Neuroanat. 9:142; fiji/Trainable_Segmentation
    src/main/java/trainableSegmentation/metrics/RandError.java `getMaximalVRandAfterThinning(.., perSliceAverage
    = true)` and VariationOfInformation.java `getMaximalVInfoAfterThinning`):

    - per threshold t and slice: the true cells are the 4-connected components of truth class 1 (Fiji binarises
      the labels at t too, which changes nothing for ISBI's 0/255 label images); the proposal is prob > t
      (compared in double, as Java), its borders thinned by Fiji's watershed (`thin_borders`); then
      `foreground_restricted_scores` of the two.
    - per threshold: the mean over slices of the per-slice V_Rand, and of the per-slice V_Info (macro average).
    - the score is the maximum over the thresholds, its threshold the first reaching it. As in Fiji the maximum
      starts at 0 and skips a NaN mean (a slice whose V_Info is NaN, see `foreground_restricted_scores`, drops
      that threshold for V_Info): a stack where no threshold scores above 0 gets 0 at the first threshold.

    prob: (N,H,W) P(cell) in [0,1]; truth: (N,H,W) class ids, 0 membrane, 1 cell. Returns v_rand, v_info (higher
    is better, 1 = perfect), v_rand_threshold, v_info_threshold and thinned (True: scores after border thinning).
    """
    prob, truth = _check_segmentation(prob, truth)
    thresholds = [float(t) for t in thresholds]
    if not thresholds or min(thresholds) < 0 or max(thresholds) > 1:
        raise UserError(f"ISBI thresholds must be a non-empty list in [0, 1], got {thresholds}")
    v_rand = np.empty((len(thresholds), len(prob)))
    v_info = np.empty_like(v_rand)
    for i, (p, t) in enumerate(zip(prob, truth)):
        truth_cells = _TruthCells(label(t == 1, connectivity=1))
        p = p.astype(np.float64)  # Java compares the float pixel with the double threshold in double
        previous = None
        for k, th in enumerate(thresholds):
            cell = p > th
            if previous is not None and np.array_equal(cell, previous):  # same proposal, same scores
                v_rand[k, i], v_info[k, i] = v_rand[k - 1, i], v_info[k - 1, i]
                continue
            scores = truth_cells.scores(thin_borders(cell))
            v_rand[k, i], v_info[k, i] = scores["v_rand"], scores["v_info"]
            previous = cell
    best_rand, rand_th = _fiji_maximum(v_rand.mean(axis=1), thresholds)
    best_info, info_th = _fiji_maximum(v_info.mean(axis=1), thresholds)
    return {"v_rand": best_rand, "v_rand_threshold": rand_th, "v_info": best_info, "v_info_threshold": info_th,
            "thinned": True}


def _fiji_maximum(scores, thresholds):
    """Fiji's `if (score > best) {best = score; bestTh = th;}` from best = 0, bestTh = the first threshold."""
    best, best_th = 0.0, thresholds[0]
    for score, th in zip(scores, thresholds):
        if score > best:  # False for NaN
            best, best_th = float(score), th
    return best, best_th


def thin_borders(cell):
    """Fiji's border thinning of a binary proposal (H,W) (True = cell): trainableSegmentation's
    utils/WatershedTransform2D.java (Vincent-Soille flooding, 4-connectivity) applied, as RandError.java
    `getForegroundRestrictedRandAfterThinningStatsN2` and VariationOfInformation.java
    `foregroundRestrictedScoreAfterThinningN2` do, to the image that is 0 on cells and 255 on borders.

    Returns int labels: the 4-connected cells keep one label each, every border pixel joins the cell the flood
    reaches it from, and pixels the floods of two cells meet on (the watershed lines, mostly 1 pixel wide) are 0.
    Reproduced exactly, including the order ties are broken in: the flood is a FIFO from the border pixels next
    to a cell, taken in Fiji's pixel-list order (x outer, y inner), each visiting its neighbours (x-1,y),
    (x,y-1), (x+1,y), (x,y+1). A pixel gets the label of its already flooded neighbours if they have one label,
    else 0 (two labels, or only watershed neighbours). Here one vectorised step per flood distance; within a
    distance the queue order decides, solved by iterating to the fixed point. No cell at all: Fiji's flooding
    finds one minimum, the whole image (one label).
    """
    cell = np.ascontiguousarray(np.asarray(cell, bool).T)  # indexed [x, y] as Fiji: flat in its pixel-list order
    if not cell.any():
        return np.ones(cell.shape[::-1], np.int32)
    cells = ndimage.label(cell, output=np.int32)[0]  # 4-connected
    if cell.all():
        return cells.T
    # A 1-pixel frame around; labels > 0, watershed 0, and the three states below.
    unvisited, outside, queued = -1, -2, -3
    grid = np.full((cell.shape[0] + 2, cell.shape[1] + 2), outside, np.int32)
    grid[1:-1, 1:-1] = np.where(cell, cells, unvisited)
    padded, grid = grid, grid.ravel()
    stride = padded.shape[1]
    offsets = np.array([-stride, -1, stride, 1])  # (x-1,y), (x,y-1), (x+1,y), (x,y+1) as Neighborhood2DC4
    touching = np.zeros(padded.shape, bool)  # border pixels next to a cell: the first flood distance
    inner = padded[1:-1, 1:-1] > 0
    touching[2:, 1:-1] |= inner
    touching[:-2, 1:-1] |= inner
    touching[1:-1, 2:] |= inner
    touching[1:-1, :-2] |= inner
    touching &= padded == unvisited
    front = np.flatnonzero(touching)  # in Fiji's queue order: x outer, y inner
    rank = np.zeros(grid.size, np.int64)  # queue position within the current distance
    code = np.zeros(grid.size, np.int32)  # provisional label there: > 0, 0 (two labels: watershed), -1 open
    first = np.empty(grid.size, np.int64)
    first_distance = True
    while front.size:
        grid[front] = queued
        rank[front] = np.arange(front.size)
        near = front[:, None] + offsets
        seen = grid[near]
        labels, open_ = _flood_label(seen)  # from the nearer distances
        # Same-distance neighbours flooded before can change a pixel's label only if they may end with another
        # label (or the pixel is open); those "hot" pixels get the queue order worked out.
        mine = np.where(open_, -1, labels)
        code[front] = mine
        # Codes of the same-distance neighbours (0 elsewhere); at the first distance the queue runs in flat
        # order, so only (x-1,y) and (x,y-1) can come before.
        other = code[near[:, :2] if first_distance else near]
        hot = ((other != 0) & ((other != mine[:, None]) | open_[:, None])).any(axis=1) & (mine != 0)
        first_distance = False
        code[front] = 0
        todo = np.flatnonzero(hot)
        if todo.size:
            _settle_queue_order(todo, near, seen, labels, rank, queued)
        grid[front] = labels
        # Next distance in queue order: a pixel is queued by its first (lowest-rank) neighbour of this distance,
        # which queues its unvisited neighbours in the neighbourhood's order: key rank * 4 + direction.
        keys = np.flatnonzero(seen == unvisited)
        candidates = near.ravel()[keys]
        first[candidates] = near.size
        np.minimum.at(first, candidates, keys)
        front = candidates[first[candidates] == keys]
    return padded[1:-1, 1:-1].T


def _flood_label(states):
    """Per row of 4 neighbour states (> 0 label, 0 watershed, < 0 not flooded yet): the label if the labelled
    neighbours have one, else 0 (watershed); and whether it had no labelled neighbour."""
    c = states.T
    high = np.maximum(np.maximum(c[0], c[1]), np.maximum(c[2], c[3]))
    c = np.where(c > 0, c, np.iinfo(np.int32).max)
    low = np.minimum(np.minimum(c[0], c[1]), np.minimum(c[2], c[3]))
    return np.where(low == high, high, 0), high <= 0


def _settle_queue_order(todo, near, seen, labels, rank, queued):
    """The labels of the hot pixels `todo` (indices into the current distance's queue) given the same-distance
    neighbours flooded before them: iterated to the fixed point, which is unique as each pixel depends on
    earlier ones only, recomputing only the pixels whose earlier neighbours changed."""
    ranks = rank[near[todo]]
    flooded = seen[todo]
    same = flooded == queued
    earlier = same & (ranks < todo[:, None])
    later = same & (ranks > todo[:, None])
    ahead = np.where(earlier, ranks, 0)
    position = np.full(labels.size, -1, np.int64)
    position[todo] = np.arange(todo.size)
    new, _ = _flood_label(np.where(earlier, labels[ahead], flooded))
    rows = np.flatnonzero(new != labels[todo])
    labels[todo[rows]] = new[rows]
    while rows.size:  # rows changed: recompute the pixels after them
        rows = position[np.unique(ranks[rows][later[rows]])]
        rows = rows[rows >= 0]
        new, _ = _flood_label(np.where(earlier[rows], labels[ahead[rows]], flooded[rows]))
        diff = new != labels[todo[rows]]
        rows = rows[diff]
        labels[todo[rows]] = new[diff]


def foreground_restricted_scores(true_cells, proposal):
    """V_Rand and V_Info of one slice, with their split and merge parts, from true cell labels (0 = membrane)
    and proposal labels (0 = border) of one shape, as Fiji computes them: RandError.java
    `getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor)` with ClassificationStatistics.java,
    and VariationOfInformation.java `foregroundRestrictedFscore`.

    Only the n pixels inside true cells count. n_ij: pixels of true cell i in proposal segment j > 0; a pixel of
    proposal label 0 is a singleton segment of its own. a_i: size of true cell i, b_j: pixels of segment j inside
    true cells. Pairs include each pixel with itself (Fiji's N^2 normalisation), so a singleton adds 1 to
    sum n_ij^2 and to sum b_j^2. V_Rand_split = sum n_ij^2 / sum a_i^2 (Fiji's recall), V_Rand_merge =
    sum n_ij^2 / sum b_j^2 (precision), V_Rand their harmonic mean (F-score). With p = counts / n and natural
    logs, S the proposal and T the truth: V_Info_split = I(S;T) / H(S), V_Info_merge = I(S;T) / H(T), V_Info
    their harmonic mean, 2 I / (H(S) + H(T)).

    Fiji's edge cases, kept: a slice without true cells gives V_Rand 0 (0/0 arithmetic there) and V_Info NaN;
    a single true cell (H(T) = 0) or a single proposal segment and no border pixel in true cells (H(S) = 0)
    gives V_Info 0, even for a perfect proposal; I = 0 with both entropies > 0 gives V_Info NaN (0/0). The counts
    are exact integers here, so a result can differ from Fiji's in the last bits.
    """
    true_cells, proposal = np.asarray(true_cells), np.asarray(proposal)
    if true_cells.shape != proposal.shape:
        raise UserError(f"true cells {true_cells.shape} and proposal {proposal.shape} must have one shape")
    return _TruthCells(true_cells).scores(proposal)


class _TruthCells:
    """The truth side of `foreground_restricted_scores`, kept across the thresholds of a slice."""

    def __init__(self, true_cells):
        flat = true_cells.ravel()
        self.inside = np.flatnonzero(flat > 0)
        self.cells = flat[self.inside].astype(np.int64)
        a = np.bincount(self.cells)
        self.a = a[a > 0]

    def scores(self, proposal):
        n = self.cells.size
        if n == 0:
            return {"v_rand": 0.0, "v_rand_split": 0.0, "v_rand_merge": 0.0,
                    "v_info": float("nan"), "v_info_split": float("nan"), "v_info_merge": float("nan")}
        s = proposal.ravel()[self.inside].astype(np.int64)
        segment = s > 0
        singletons = n - np.count_nonzero(segment)
        t, s = self.cells[segment], s[segment]
        b = np.bincount(s)
        b = b[b > 0]
        width = int(s.max(initial=0)) + 1
        pairs = t * width + s
        if (int(t.max(initial=0)) + 1) * width <= 8 * n:
            n_ij = np.bincount(pairs)
            n_ij = n_ij[n_ij > 0]
        else:
            n_ij = np.unique(pairs, return_counts=True)[1]
        a = self.a
        # V_Rand: N^2 pair counts (tp, fp, fn of ClassificationStatistics).
        sum_ij2 = float(n_ij @ n_ij) + singletons
        sum_a2, sum_b2 = float(a @ a), float(b @ b) + singletons
        rand_merge = 1.0 if sum_b2 == sum_ij2 else sum_ij2 / sum_b2
        rand_split = 1.0 if sum_a2 == sum_ij2 else sum_ij2 / sum_a2
        v_rand = 2 * rand_merge * rand_split / (rand_merge + rand_split)
        # V_Info: entropies of p = counts / n; a singleton contributes (1/n) log(1/n).
        singleton_term = singletons / n * np.log(n)
        h_truth = -_plogp(a / n)
        h_proposal = -_plogp(b / n) + singleton_term
        h_joint = -_plogp(n_ij / n) + singleton_term
        mutual = h_truth + h_proposal - h_joint
        if h_proposal == 0:  # Fiji tests H(T) == 0 first, then H(S) == 0, which wins
            merge, split = 1.0, 0.0
        elif h_truth == 0:
            merge, split = 0.0, 1.0
        else:
            merge, split = mutual / h_truth, mutual / h_proposal
        with np.errstate(invalid="ignore", divide="ignore"):
            v_info = float(np.float64(2 * merge * split) / (merge + split))
        return {"v_rand": float(v_rand), "v_rand_split": float(rand_split), "v_rand_merge": float(rand_merge),
                "v_info": v_info, "v_info_split": float(split), "v_info_merge": float(merge)}


def _plogp(p):
    return float(np.sum(p * np.log(p)))


def classification_metrics(probs, labels, class_names=None):
    """Accuracy, confusion matrix (rows = true class, columns = predicted) and per-class accuracy (recall;
    None for a class without samples) of class probabilities (N,K) against integer labels (N,)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != probs.shape[:1] or not len(labels):
        raise UserError(f"need probabilities (N,K) and labels (N,), N > 0; got {probs.shape} and {labels.shape}")
    k = probs.shape[1]
    class_names = [str(c) for c in range(k)] if class_names is None else list(class_names)
    if len(class_names) != k:
        raise UserError(f"{k} classes in the probabilities but {len(class_names)} class names")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
        raise UserError(f"labels must be integers in 0..{k - 1}")
    cm = confusion_matrix(labels, probs.argmax(axis=1), labels=np.arange(k))
    support = cm.sum(axis=1)
    return {
        "n_images": len(labels),
        "accuracy": float(np.trace(cm) / cm.sum()),
        "per_class_accuracy": {name: float(cm[c, c] / support[c]) if support[c] else None
                               for c, name in enumerate(class_names)},
        "class_names": class_names,
        "confusion_matrix": cm.tolist(),
    }


def _check_segmentation(prob, truth):
    prob, truth = np.asarray(prob), np.asarray(truth)
    if prob.ndim == 2:
        prob, truth = prob[None], truth[None]
    if prob.ndim != 3 or prob.shape != truth.shape or not prob.size:
        raise UserError(f"probabilities {prob.shape} and truth {truth.shape} must be equal (N,H,W) stacks")
    if not (np.all(np.isfinite(prob)) and prob.min() >= 0 and prob.max() <= 1):
        raise UserError("probabilities must lie in [0, 1]")
    if not np.isin(truth, (0, 1)).all():
        raise UserError(f"truth must hold class ids 0 (membrane) and 1 (cell), found {np.unique(truth)[:5]}")
    return prob, truth.astype(np.uint8)
