"""Scores for segmentation (U-Net on ISBI 2012) and classification (MNIST), in NumPy.

Segmentation inputs: `prob` (N,H,W) = P(class 1) in [0,1] (a softmax caller passes channel 1) and `truth`
(N,H,W) of class ids, 0 = membrane, 1 = cell interior. A pixel is predicted as cell when prob > threshold,
which at 0.5 is the argmax of the 2-class softmax.
"""
import numpy as np
from skimage.measure import label
from skimage.metrics import adapted_rand_error
from sklearn.metrics import confusion_matrix

from hpctrain.errors import UserError
from hpctrain.tasks.segmentation import NVIDIA_EPS

SEGMENTATION_CLASSES = ("membrane", "cell")


def segmentation_metrics(prob, truth, class_names=SEGMENTATION_CLASSES, threshold=0.5):
    """Scores a stack of probability maps against its class-id masks.

    - dice, iou: per class over all pixels of the stack, from the thresholded prediction; a class absent
      from both prediction and truth scores 1 (nothing to find, nothing found). dice_mean, iou_mean: their mean.
    - soft_dice: NVIDIA UNet_Medical's 2-class soft Dice on the probabilities (see `soft_dice`).
    - pixel_error: 1 - pixel accuracy.
    - rand_error: the ISBI 2012 foreground-restricted adapted Rand error, mean over slices (see `rand_error`).
    """
    prob, truth = _check_segmentation(prob, truth)
    if len(class_names) != 2:
        raise UserError(f"segmentation has 2 classes, got class names {list(class_names)}")
    pred = (prob > threshold).astype(np.uint8)
    cm = confusion_matrix(truth.ravel(), pred.ravel(), labels=[0, 1])
    dice, iou = {}, {}
    for c, name in enumerate(class_names):
        tp = cm[c, c]
        wrong = cm[c, :].sum() + cm[:, c].sum() - 2 * tp  # false negatives + false positives
        dice[name] = float(2 * tp / (2 * tp + wrong)) if tp + wrong else 1.0
        iou[name] = float(tp / (tp + wrong)) if tp + wrong else 1.0
    return {
        "n_images": len(prob),
        "threshold": float(threshold),
        "dice": dice,
        "dice_mean": float(np.mean(list(dice.values()))),
        "iou": iou,
        "iou_mean": float(np.mean(list(iou.values()))),
        "soft_dice": soft_dice(prob, truth),
        "pixel_error": float(1 - np.trace(cm) / cm.sum()),
        "rand_error": float(np.mean([rand_error(p, t) for p, t in zip(pred, truth)])),
    }


def soft_dice(prob, truth, eps=NVIDIA_EPS):
    """Mean 2-class soft Dice as NVIDIA DeepLearningExamples reports it for UNet_Medical (0.89 on ISBI 2012):
    TensorFlow2/Segmentation/UNet_Medical/runtime/losses.py `dice_coef` on the one-hot [1-p, p] and [1-t, t]:
    per image and class (2*sum(p*t) + 1e-6) / (sum(p*p + t*t) + 1e-6) over the pixels, averaged over the
    images ("over batch"), then over the classes (its eval_dice_score = 1 - mean dice loss)."""
    scores = []
    for p, t in zip(prob, truth):
        p, t = p.ravel().astype(np.float64), t.ravel().astype(np.float64)
        pred, target = np.stack([1 - p, p], -1), np.stack([1 - t, t], -1)
        inter = np.sum(pred * target, axis=0)
        union = np.sum(pred * pred + target * target, axis=0)
        scores.append((2 * inter + eps) / (union + eps))
    return float(np.mean(scores))


def rand_error(pred, truth):
    """Foreground-restricted adapted Rand error of one slice, as the ISBI 2012 challenge scored it (Fiji's
    trainableSegmentation RandError, Arganda-Carreras et al. 2015): the cells of truth and prediction are
    their 4-connected components of class 1. `adapted_rand_error` ignores truth label 0 (membrane); predicted
    membrane pixels become singletons, so they join no cell, as Fiji prunes the prediction's zero component.
    A slice without any pair of pixels in the same true or predicted cell scores 0 (no pair to get wrong).
    Unlike the final leaderboard, borders are not thinned and the threshold is not optimised."""
    true_cells = label(truth == 1, connectivity=1)
    pred_cells = label(pred == 1, connectivity=1)
    membrane = pred_cells == 0
    pred_cells[membrane] = pred_cells.max() + 1 + np.arange(np.count_nonzero(membrane))
    with np.errstate(divide="ignore", invalid="ignore"):
        error = adapted_rand_error(true_cells, pred_cells)[0]
    return 0.0 if np.isnan(error) else float(error)


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
