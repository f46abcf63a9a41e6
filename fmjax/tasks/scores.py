"""Classification eval metrics on the host (pure numpy) and the best-eval tracker for early stop.

Conventions, chosen to match scikit-learn (cross-checked against scikit-learn 1.9.1):

* Rows whose weight is 0 are dropped before anything else (they are padding). Other weights are
  sample weights (``sample_weight`` in scikit-learn); with no weights every row counts once.
* Macro averages run over the classes that occur, in a kept row, as a label or as a prediction:
  scikit-learn's ``labels=None``. A class absent from both is not averaged in as a zero.
* Zero division gives 0 (scikit-learn's ``zero_division=0``): a class never predicted has
  precision 0, a class with no true rows has recall 0, and F1 is 0 when precision + recall = 0.
  Per-class F1 is 2 tp / (2 tp + fp + fn), which is 2 p r / (p + r) whenever tp > 0, and the macro
  F1 is the mean of per-class F1s (not the F1 of the macro precision and recall).
* The prediction is argmax over classes; a tie goes to the lowest class index (``np.argmax``).
* ``eval_auc`` (binary tasks only) is the exact ROC AUC of ``softmax(logits)[:, 1]``: the
  Mann-Whitney U statistic with tied scores counted as half a correctly ordered pair, NaN when the
  kept rows hold only one class. Rows are ranked by the margin ``logits[:, 1] - logits[:, 0]``,
  a strictly increasing function of ``softmax(logits)[:, 1]``; unlike a float softmax it neither
  saturates distinct scores to 1.0 nor splits equal margins by rounding. Passing probabilities
  (or log-probabilities) instead of logits gives the same argmax and the same AUC, because the
  AUC only depends on the order of the scores.

``eval_loss`` is not computed here; the eval step computes it on device.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

METRIC_KEYS = ("eval_accuracy", "eval_precision", "eval_recall", "eval_f1")
BINARY_METRIC_KEYS = METRIC_KEYS + ("eval_auc",)


def classification_metrics(labels_N, logits_NC, num_classes: int, *, weights_N=None) -> dict:
    """Accuracy, macro precision / recall / F1 and (when num_classes == 2) ROC AUC as floats.

    labels_N: integer class ids in [0, num_classes) (padding rows may hold anything, weight 0).
    logits_NC: logits, log-probabilities or probabilities, shape (N, num_classes).
    weights_N: optional non-negative sample weights; rows with weight 0 are ignored.
    Returns {eval_accuracy, eval_precision, eval_recall, eval_f1[, eval_auc]}.
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes = {num_classes!r}: classification needs at least 2 classes; "
                         "set --config.task.num_classes >= 2 (or 0 to read it from the dataset)")
    logits_NC = np.asarray(logits_NC)
    if logits_NC.ndim != 2 or logits_NC.shape[1] != num_classes:
        raise ValueError(f"logits_NC has shape {logits_NC.shape}, expected (N, {num_classes}) with "
                         f"num_classes = {num_classes}; check --config.task.num_classes against "
                         "the classifier head's output size")
    labels_N, keep_N, weights_N = _kept_rows(labels_N, weights_N, len(logits_NC), num_classes)
    logits_NC = logits_NC[keep_N].astype(np.float64)
    if not np.all(np.isfinite(logits_NC)):
        bad = int(np.sum(~np.all(np.isfinite(logits_NC), axis=1)))
        raise ValueError(f"logits_NC has non-finite values in {bad} kept row(s); the model "
                         "diverged or the eval batch holds garbage rows that need weight 0")
    preds_N = np.argmax(logits_NC, axis=1)
    cm_CC = confusion_matrix(labels_N, preds_N, num_classes, weights_N=weights_N)
    precision_C, recall_C, f1_C, present_C = _per_class(cm_CC)
    out = {
        "eval_accuracy": float(np.trace(cm_CC) / cm_CC.sum()),
        "eval_precision": float(precision_C[present_C].mean()),
        "eval_recall": float(recall_C[present_C].mean()),
        "eval_f1": float(f1_C[present_C].mean()),
    }
    if num_classes == 2:
        out["eval_auc"] = roc_auc(labels_N, logits_NC[:, 1] - logits_NC[:, 0], weights_N=weights_N)
    return out


def confusion_matrix(labels_N, preds_N, num_classes: int, *, weights_N=None) -> np.ndarray:
    """(num_classes, num_classes) matrix: row = true class, column = predicted class.

    Integer counts (int64) without weights; sums of weights (float64) with them. Every row of the
    inputs counts (drop padding first, or give it weight 0).
    """
    labels_N = np.asarray(labels_N).reshape(-1)
    preds_N = np.asarray(preds_N).reshape(-1)
    if labels_N.shape != preds_N.shape:
        raise ValueError(f"labels has {labels_N.size} rows but preds has {preds_N.size}; "
                         "pass one prediction per label")
    for name, ids in (("labels", labels_N), ("preds", preds_N)):
        _check_class_ids(name, ids, num_classes)
    flat_N = labels_N.astype(np.int64) * num_classes + preds_N.astype(np.int64)
    if weights_N is None:
        counts = np.bincount(flat_N, minlength=num_classes * num_classes)
    else:
        weights_N = np.asarray(weights_N, np.float64).reshape(-1)
        if weights_N.shape != labels_N.shape:
            raise ValueError(f"weights_N has {weights_N.size} rows but labels has {labels_N.size}")
        counts = np.bincount(flat_N, weights=weights_N, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def roc_auc(labels_N, scores_N, *, weights_N=None) -> float:
    """Exact ROC AUC: P(score of a positive > score of a negative), ties counting one half.

    labels_N holds 0 / 1 (1 = positive); weights_N (optional, >= 0) weighs each row, so a pair
    (i, j) counts w_i * w_j. Equals the Mann-Whitney U with average ranks for ties divided by
    n_pos * n_neg, and scikit-learn's roc_auc_score. NaN when only one class has weight.
    """
    labels_N = np.asarray(labels_N).reshape(-1)
    scores_N = np.asarray(scores_N, np.float64).reshape(-1)
    if labels_N.shape != scores_N.shape:
        raise ValueError(f"labels has {labels_N.size} rows but scores has {scores_N.size}")
    _check_class_ids("labels", labels_N, 2)
    if np.isnan(scores_N).any():
        raise ValueError("scores_N has NaN values; the AUC needs every kept row ranked")
    weights_N = (np.ones_like(scores_N) if weights_N is None
                 else np.asarray(weights_N, np.float64).reshape(-1))
    positive_N = labels_N == 1
    pos_weight_N = np.where(positive_N, weights_N, 0.0)
    neg_weight_N = np.where(positive_N, 0.0, weights_N)
    total_pos, total_neg = pos_weight_N.sum(), neg_weight_N.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    # Group rows by distinct score (ascending); a positive beats every negative in lower groups
    # and ties (half credit) with the negatives in its own group.
    unique_G, group_N = np.unique(scores_N, return_inverse=True)
    pos_G = np.bincount(group_N, weights=pos_weight_N, minlength=unique_G.size)
    neg_G = np.bincount(group_N, weights=neg_weight_N, minlength=unique_G.size)
    neg_below_G = np.cumsum(neg_G) - neg_G
    correct = np.sum(pos_G * neg_below_G) + 0.5 * np.sum(pos_G * neg_G)
    return float(correct / (total_pos * total_neg))


def majority_baseline(train_label_counts, eval_labels_N, *, weights_N=None) -> float:
    """Accuracy (``eval_majority_baseline``) of always predicting the most frequent TRAIN class.

    train_label_counts: counts indexed by class id (sequence / array), or a {class_id: count}
    mapping. A tie between train counts goes to the lowest class id. eval_labels_N: eval class ids;
    weights_N (optional) as in classification_metrics, weight-0 rows ignored.
    """
    if isinstance(train_label_counts, Mapping):
        if not train_label_counts:
            raise ValueError("train_label_counts is empty; count the train labels first")
        size = max(int(k) for k in train_label_counts) + 1
        counts_C = np.zeros(size, np.float64)
        for k, v in train_label_counts.items():
            counts_C[int(k)] = v
    else:
        counts_C = np.asarray(train_label_counts, np.float64).reshape(-1)
    if counts_C.size == 0 or np.any(counts_C < 0) or counts_C.sum() <= 0:
        raise ValueError(f"train_label_counts = {train_label_counts!r}: needs non-negative counts "
                         "with a positive total; count the train labels first")
    majority = int(np.argmax(counts_C))
    labels_N = np.asarray(eval_labels_N).reshape(-1)
    labels_N, _, weights_N = _kept_rows(labels_N, weights_N, labels_N.size, num_classes=None)
    hits_N = (labels_N == majority).astype(np.float64)
    if weights_N is None:
        return float(hits_N.mean())
    return float(np.sum(hits_N * weights_N) / np.sum(weights_N))


class BestTracker:
    """Remembers the best value of one eval metric and how many evals ago it was seen.

    mode "min" (lower is better) or "max"; None picks "min" for names containing "loss", else
    "max". Only a strict improvement is a new best (a tie keeps the earlier step), and a NaN value
    never is. state_dict() is JSON-able so the tracker survives a resume.
    """

    def __init__(self, metric_name: str, mode: str | None = None):
        if mode is None:
            mode = "min" if "loss" in metric_name else "max"
        if mode not in ("min", "max"):
            raise ValueError(f"BestTracker mode = {mode!r} for metric {metric_name!r}; use 'min' "
                             "(lower is better) or 'max' (higher is better)")
        self.metric_name = metric_name
        self.mode = mode
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.num_evals = 0

    def update(self, step: int, metrics: Mapping) -> bool:
        """Records one eval; True when its value is a new best (keep this checkpoint)."""
        if self.metric_name not in metrics:
            raise ValueError(
                f"config.task.select_metric = {self.metric_name!r} is not among the eval metrics "
                f"(available: {', '.join(sorted(metrics))}); set --config.task.select_metric "
                "to one of them")
        value = float(np.asarray(metrics[self.metric_name]))
        self.num_evals += 1
        if not math.isnan(value) and (self.best_value is None or self._better(value)):
            self.best_value, self.best_step, self.evals_since_best = value, int(step), 0
            return True
        self.evals_since_best += 1
        return False

    def should_stop(self, patience: int) -> bool:
        """True once `patience` evals in a row brought no new best; patience 0 never stops."""
        if int(patience) < 0:
            raise ValueError(f"config.task.patience = {patience!r} is negative; use 0 (never stop "
                             "early) or the number of evals without improvement to allow")
        return patience > 0 and self.evals_since_best >= patience

    def _better(self, value: float) -> bool:
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def state_dict(self) -> dict:
        return {"metric_name": self.metric_name, "mode": self.mode,
                "best_value": self.best_value, "best_step": self.best_step,
                "evals_since_best": self.evals_since_best, "num_evals": self.num_evals}

    @classmethod
    def from_state_dict(cls, state: Mapping, *, metric_name: str | None = None) -> "BestTracker":
        """Rebuilds a tracker; with metric_name, refuses a state saved for a different metric."""
        missing = sorted(set(cls("loss").state_dict()) - set(state))
        if missing:
            raise ValueError(f"BestTracker state is missing {missing}; it was not written by "
                             "BestTracker.state_dict()")
        if metric_name is not None and metric_name != state["metric_name"]:
            raise ValueError(
                f"config.task.select_metric = {metric_name!r} but the checkpoint tracked "
                f"{state['metric_name']!r}; resume with --config.task.select_metric="
                f"{state['metric_name']} or start a fresh run")
        tracker = cls(state["metric_name"], state["mode"])
        best = state["best_value"]
        tracker.best_value = None if best is None else float(best)
        tracker.best_step = None if state["best_step"] is None else int(state["best_step"])
        tracker.evals_since_best = int(state["evals_since_best"])
        tracker.num_evals = int(state["num_evals"])
        return tracker


def _per_class(cm_CC: np.ndarray):
    """Per-class precision, recall, F1 (zero division -> 0) and the mask of classes present."""
    tp_C = np.diag(cm_CC).astype(np.float64)
    predicted_C = cm_CC.sum(axis=0).astype(np.float64)  # tp + fp
    actual_C = cm_CC.sum(axis=1).astype(np.float64)  # tp + fn
    precision_C = np.divide(tp_C, predicted_C, out=np.zeros_like(tp_C), where=predicted_C > 0)
    recall_C = np.divide(tp_C, actual_C, out=np.zeros_like(tp_C), where=actual_C > 0)
    f1_denominator_C = predicted_C + actual_C  # 2 tp + fp + fn
    f1_C = np.divide(2 * tp_C, f1_denominator_C, out=np.zeros_like(tp_C),
                     where=f1_denominator_C > 0)
    return precision_C, recall_C, f1_C, (predicted_C > 0) | (actual_C > 0)


def _kept_rows(labels_N, weights_N, num_rows: int, num_classes: int | None):
    """Drops weight-0 rows; returns (labels, keep mask, weights or None) and checks the labels."""
    labels_N = np.asarray(labels_N).reshape(-1)
    if labels_N.size != num_rows:
        raise ValueError(f"labels_N has {labels_N.size} rows but logits_NC has {num_rows}; "
                         "pass one label per row")
    keep_N = np.ones(num_rows, bool)
    if weights_N is not None:
        weights_N = np.asarray(weights_N, np.float64).reshape(-1)
        if weights_N.size != num_rows:
            raise ValueError(f"weights_N has {weights_N.size} rows but labels_N has {num_rows}; "
                             "pass one weight per row (0 for padding)")
        if not np.all(np.isfinite(weights_N)) or np.any(weights_N < 0):
            raise ValueError("weights_N must be finite and >= 0 (0 marks a padding row); got "
                             f"min {np.min(weights_N)!r}")
        keep_N = weights_N > 0
        weights_N = weights_N[keep_N]
    labels_N = labels_N[keep_N]
    if labels_N.size == 0:
        raise ValueError("no eval rows with weight > 0: the eval set is empty or all padding; "
                         "check the eval split and --config.data settings")
    if num_classes is not None:
        _check_class_ids("labels_N", labels_N, num_classes)
    elif not np.issubdtype(labels_N.dtype, np.integer):
        raise ValueError(f"labels_N has dtype {labels_N.dtype}; class ids must be integers")
    return labels_N, keep_N, weights_N


def _check_class_ids(name: str, ids, num_classes: int):
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} has dtype {ids.dtype}; class ids must be integers")
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        bad = ids[(ids < 0) | (ids >= num_classes)][0]
        raise ValueError(f"{name} holds class id {int(bad)} outside [0, {num_classes}) with "
                         f"num_classes = {num_classes}; fix --config.task.num_classes or give the "
                         "row weight 0 if it is padding")
