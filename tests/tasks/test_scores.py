"""Classification metrics against hand arithmetic; literals also match scikit-learn 1.9.1
(precision/recall/f1_score(average="macro", zero_division=0), accuracy_score, roc_auc_score,
with sample_weight where weights are used), checked in a scratch venv; sklearn is not a dependency.
"""
import itertools
import json
import math

import numpy as np
import pytest

from fmjax.tasks.scores import BestTracker, classification_metrics, confusion_matrix, majority_baseline, roc_auc


def one_hot_logits(preds, num_classes):
    return 3.0 * np.eye(num_classes, dtype=np.float32)[np.asarray(preds)]


def binary_logits(scores):
    """Logits [0, s]: softmax(...)[:, 1] = sigmoid(s), increasing in s."""
    scores = np.asarray(scores, np.float64)
    return np.stack([np.zeros_like(scores), scores], axis=1)


def brute_force_auc(labels, scores, weights=None):
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, float)
    num = den = 0.0
    for i, j in itertools.product(range(len(labels)), repeat=2):
        if labels[i] == 1 and labels[j] == 0:
            w = weights[i] * weights[j]
            num += w * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
            den += w
    return num / den


def rank_sum_auc(labels, scores):
    """Mann-Whitney U = R_pos - n_pos (n_pos + 1) / 2 (average ranks); AUC = U / (n_pos n_neg)."""
    scores = np.asarray(scores, float)
    ranks = np.empty(len(scores))
    for i, s in enumerate(scores):  # average 1-based rank of the tie group
        ranks[i] = np.sum(scores < s) + (np.sum(scores == s) + 1) / 2
    pos = np.asarray(labels) == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ----------------------------------------------------------------------------- macro P / R / F1

LABELS_3 = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
PREDS_3 = [0, 0, 1, 1, 2, 2, 2, 2, 0, 1]


def test_confusion_matrix_rows_true_columns_predicted():
    # true 0 -> pred 0,0,1      true 1 -> pred 1,2      true 2 -> pred 2,2,2,0,1
    cm = confusion_matrix(LABELS_3, PREDS_3, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [1, 1, 3]])
    assert cm.dtype == np.int64
    weighted = confusion_matrix([0, 1, 1], [0, 0, 1], 2, weights_N=[2.0, 0.5, 1.0])
    np.testing.assert_array_equal(weighted, [[2.0, 0.0], [0.5, 1.0]])


def test_three_class_hand_computed():
    # Confusion [[2,1,0],[0,1,1],[1,1,3]]; column sums (predicted) 3, 3, 4; row sums (true) 3, 2, 5.
    # accuracy  = (2 + 1 + 3) / 10 = 0.6
    # precision = 2/3, 1/3, 3/4     -> macro (8 + 4 + 9) / 36 = 7/12
    # recall    = 2/3, 1/2, 3/5     -> macro (20 + 15 + 18) / 90 = 53/90
    # F1 = 2tp / (pred + true) = 4/6, 2/5, 6/9 -> macro (10 + 6 + 10) / 45 = 26/45
    # sklearn 1.9.1: 0.6, 0.5833333333333334, 0.5888888888888889, 0.5777777777777778
    m = classification_metrics(LABELS_3, one_hot_logits(PREDS_3, 3), 3)
    assert set(m) == {"eval_accuracy", "eval_precision", "eval_recall", "eval_f1"}
    assert m["eval_accuracy"] == pytest.approx(0.6, abs=1e-12)
    assert m["eval_precision"] == pytest.approx(7 / 12, abs=1e-12)
    assert m["eval_recall"] == pytest.approx(53 / 90, abs=1e-12)
    assert m["eval_f1"] == pytest.approx(26 / 45, abs=1e-12)
    assert m["eval_precision"] == pytest.approx(0.5833333333333334, abs=1e-12)
    assert m["eval_f1"] == pytest.approx(0.5777777777777778, abs=1e-12)
    assert all(type(v) is float for v in m.values())  # JSON-able


def test_class_never_predicted_scores_zero():
    # labels [0,1,2,2], preds [0,1,1,1]: class 2 is never predicted.
    # class 0: p 1/1, r 1/1, F1 1
    # class 1: p 1/3, r 1/1, F1 2/(3+1) = 1/2
    # class 2: p 0 (0/0 -> 0), r 0/2, F1 0
    # macro p = (1 + 1/3 + 0)/3 = 4/9, r = (1 + 1 + 0)/3 = 2/3, F1 = (1 + 1/2 + 0)/3 = 1/2
    # accuracy 2/4
    # sklearn 1.9.1: 0.5, 0.4444444444444444, 0.6666666666666666, 0.5
    labels, preds = [0, 1, 2, 2], [0, 1, 1, 1]
    m = classification_metrics(labels, one_hot_logits(preds, 3), 3)
    assert m["eval_accuracy"] == pytest.approx(0.5, abs=1e-12)
    assert m["eval_precision"] == pytest.approx(4 / 9, abs=1e-12)
    assert m["eval_recall"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["eval_f1"] == pytest.approx(0.5, abs=1e-12)


def test_macro_average_runs_over_labels_or_predictions_present():
    # Classes 3 and 4 appear nowhere: they are not averaged in as zeros (sklearn labels=None).
    labels, preds = [0, 1, 2, 2], [0, 1, 1, 1]
    m5 = classification_metrics(labels, one_hot_logits(preds, 5), 5)
    assert m5["eval_precision"] == pytest.approx(4 / 9, abs=1e-12)  # not (4/3)/5
    assert m5["eval_recall"] == pytest.approx(2 / 3, abs=1e-12)
    # A class only predicted (never true) does count: labels [0,0,1], preds [0,2,1].
    # class 0: p 1, r 1/2, F1 2/3 | class 1: 1, 1, 1 | class 2: p 0/1, r 0 (0/0), F1 0
    # macro p = 2/3, r = 1/2, F1 = (2/3 + 1)/3 = 5/9
    # sklearn 1.9.1: 0.6666666666666666, 0.5, 0.5555555555555555
    m = classification_metrics([0, 0, 1], one_hot_logits([0, 2, 1], 3), 3)
    assert m["eval_precision"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["eval_recall"] == pytest.approx(0.5, abs=1e-12)
    assert m["eval_f1"] == pytest.approx(5 / 9, abs=1e-12)


def test_perfect_predictions():
    labels = [0, 1, 2, 3, 1, 2]
    m = classification_metrics(labels, one_hot_logits(labels, 4), 4)
    assert m == {"eval_accuracy": 1.0, "eval_precision": 1.0, "eval_recall": 1.0, "eval_f1": 1.0}
    mb = classification_metrics([0, 1, 1, 0], binary_logits([-2.0, 1.0, 3.0, -1.0]), 2)
    assert mb == {"eval_accuracy": 1.0, "eval_precision": 1.0, "eval_recall": 1.0,
                  "eval_f1": 1.0, "eval_auc": 1.0}


def test_probabilities_give_the_same_metrics_as_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 2))
    labels = rng.integers(0, 2, 40)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a, b = classification_metrics(labels, logits, 2), classification_metrics(labels, probs, 2)
    assert a == pytest.approx(b, abs=1e-12)


def test_weighted_rows_match_sample_weight():
    # labels [0,1,1,0,1,2], preds [0,1,0,0,2,2], weights [1,2,0.5,3,1,2]
    # weighted confusion [[4,0,0],[0.5,2,1],[0,0,2]], total 9.5: acc = 8/9.5 = 16/19
    # precision 4/4.5, 2/2, 2/3 -> 23/27 ; recall 4/4, 2/3.5, 2/2 -> 6/7
    # F1 8/8.5, 4/5.5, 4/5 -> (16/17 + 8/11 + 4/5)/3
    # sklearn 1.9.1 (sample_weight): 0.8421052631578947, 0.8518518518518517,
    #                                 0.8571428571428571, 0.8228163992869876
    m = classification_metrics([0, 1, 1, 0, 1, 2], one_hot_logits([0, 1, 0, 0, 2, 2], 3), 3,
                               weights_N=[1, 2, 0.5, 3, 1, 2])
    assert m["eval_accuracy"] == pytest.approx(16 / 19, abs=1e-12)
    assert m["eval_precision"] == pytest.approx(23 / 27, abs=1e-12)
    assert m["eval_recall"] == pytest.approx(6 / 7, abs=1e-12)
    assert m["eval_f1"] == pytest.approx((16 / 17 + 8 / 11 + 4 / 5) / 3, abs=1e-12)
    assert m["eval_f1"] == pytest.approx(0.8228163992869876, abs=1e-12)


def test_weight_zero_rows_are_ignored():
    rng = np.random.default_rng(2)
    labels, logits = rng.integers(0, 2, 30), rng.normal(size=(30, 2))
    base = classification_metrics(labels, logits, 2)
    # Padding rows: junk label -1 (out of range) or a real class, logits that would change every
    # metric, a class (2 of 3) that would otherwise join the macro average.
    pad_labels = np.concatenate([labels, [-1, 1, 0, 1]])
    pad_logits = np.concatenate([logits, [[0, 9], [9, 0], [0, 9], [np.nan, 0]]])
    weights = np.concatenate([np.ones(30), np.zeros(4)])
    assert classification_metrics(pad_labels, pad_logits, 2, weights_N=weights) == base
    three = classification_metrics([0, 1, 2], one_hot_logits([0, 1, 2], 3), 3, weights_N=[1, 1, 0])
    assert three["eval_precision"] == 1.0 and three["eval_recall"] == 1.0  # class 2 not averaged


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="class id 3 outside"):
        classification_metrics([0, 3], one_hot_logits([0, 1], 3), 3)
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(N, 4\)"):
        classification_metrics([0, 1], one_hot_logits([0, 1], 3), 4)
    with pytest.raises(ValueError, match="no eval rows with weight > 0"):
        classification_metrics([0, 1], one_hot_logits([0, 1], 2), 2, weights_N=[0, 0])
    with pytest.raises(ValueError, match="non-finite"):
        classification_metrics([0, 1], [[0.0, np.nan], [1.0, 0.0]], 2)
    with pytest.raises(ValueError, match="class ids must be integers"):
        classification_metrics([0.0, 1.0], one_hot_logits([0, 1], 2), 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        classification_metrics([0], [[1.0]], 1)


# ----------------------------------------------------------------------------- AUC

def test_auc_with_ties_by_hand():
    # positives score .9 .5 .3, negatives .9 .3 .1; 9 pairs:
    #   pos .9: tie .9 (1/2), beats .3, .1       -> 2.5
    #   pos .5: loses .9, beats .3, .1           -> 2
    #   pos .3: loses .9, tie .3 (1/2), beats .1 -> 1.5      AUC = 6/9 = 2/3
    # ranks (average over ties): .1 -> 1, .3 -> 2.5, .5 -> 4, .9 -> 5.5; R_pos = 5.5 + 4 + 2.5 = 12,
    # U = 12 - 3*4/2 = 6, U / (3*3) = 2/3. sklearn 1.9.1 roc_auc_score: 0.6666666666666666
    labels, scores = [1, 0, 1, 0, 1, 0], [0.9, 0.9, 0.5, 0.3, 0.3, 0.1]
    assert roc_auc(labels, scores) == pytest.approx(2 / 3, abs=1e-12)
    m = classification_metrics(labels, binary_logits(scores), 2)
    assert m["eval_auc"] == pytest.approx(2 / 3, abs=1e-12)
    # Weighted: pos w 2,1,.5; neg w 1,3,1
    #   -> (2*(.5+3+1) + 1*(3+1) + .5*(1.5+1)) / (3.5*5) = 14.25/17.5
    # sklearn 1.9.1 (sample_weight): 0.8142857142857144
    w = [2, 1, 1, 3, 0.5, 1]
    assert roc_auc(labels, scores, weights_N=w) == pytest.approx(14.25 / 17.5, abs=1e-12)


def test_auc_equals_pair_fraction_and_rank_statistic_on_random_data():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 40))
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            labels[0] = 1 - labels[0]
        scores = np.round(rng.normal(size=n), 1)  # rounding makes plenty of ties
        weights = rng.choice([0.5, 1.0, 2.0, 3.0], size=n)
        auc = roc_auc(labels, scores)
        assert auc == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
        assert auc == pytest.approx(rank_sum_auc(labels, scores), abs=1e-12)
        assert roc_auc(labels, scores, weights_N=weights) == pytest.approx(
            brute_force_auc(labels, scores, weights), abs=1e-12)
        # Invariant to strictly increasing transforms (ties stay ties, order stays order).
        for f in (lambda s: 3 * s - 7, np.exp, lambda s: s ** 3, lambda s: 1 / (1 + np.exp(-s))):
            assert roc_auc(labels, f(scores)) == pytest.approx(auc, abs=1e-12)
        m = classification_metrics(labels, binary_logits(scores), 2)
        assert m["eval_auc"] == pytest.approx(auc, abs=1e-12)
    # A fixed draw, sklearn 1.9.1 roc_auc_score: 0.44140625000000006
    rng = np.random.default_rng(0)
    rng.integers(0, 4, 50), rng.normal(size=(50, 4))
    labels, scores = rng.integers(0, 2, 40), np.round(rng.normal(size=40), 1)
    assert roc_auc(labels, scores) == pytest.approx(0.44140625, abs=1e-12)


def test_auc_does_not_saturate_like_float32_softmax():
    # softmax([0, 40]) and softmax([0, 50]) are both exactly 1.0 in float32, a false tie;
    # the logit margin keeps them ordered, as exact softmax would.
    logits = np.array([[0.0, 40.0], [0.0, 50.0]], np.float32)
    assert np.all(np.exp(logits[:, 1]) / np.exp(logits).sum(1) == 1.0)
    assert classification_metrics([0, 1], logits, 2)["eval_auc"] == 1.0


def test_auc_nan_when_one_class_present():
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    m = classification_metrics([0, 0, 1], binary_logits([0.1, 0.2, 0.3]), 2, weights_N=[1, 1, 0])
    assert math.isnan(m["eval_auc"])
    assert "eval_auc" not in classification_metrics([0, 1, 2], one_hot_logits([0, 1, 2], 3), 3)


# ----------------------------------------------------------------------------- majority baseline

def test_majority_baseline():
    # train counts: class 1 is most frequent (10 > 5 > 3); eval labels hit class 1 in 3 of 5 rows.
    assert majority_baseline([5, 10, 3], [1, 1, 0, 2, 1]) == pytest.approx(3 / 5)
    # Uses TRAIN counts, not eval counts: eval is mostly class 0 but train says class 1.
    assert majority_baseline([1, 9], [0, 0, 0, 1]) == pytest.approx(1 / 4)
    # Tie in train counts goes to the lowest class id (0); mapping form with a missing class.
    assert majority_baseline([4, 4, 1], [0, 1, 1, 1]) == pytest.approx(1 / 4)
    assert majority_baseline({0: 2, 2: 7}, [2, 2, 0, 1]) == pytest.approx(2 / 4)
    # Weight-0 rows ignored: 2 of the 3 kept rows are class 1.
    kept = majority_baseline([5, 10], [1, 1, 0, 0, 0], weights_N=[1, 1, 1, 0, 0])
    assert kept == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="train_label_counts"):
        majority_baseline([0, 0], [0, 1])


# ----------------------------------------------------------------------------- BestTracker

def test_best_tracker_mode_from_name():
    assert BestTracker("eval_loss").mode == "min"
    assert BestTracker("eval_accuracy").mode == "max"
    assert BestTracker("eval_f1").mode == "max"
    assert BestTracker("eval_loss", "max").mode == "max"
    with pytest.raises(ValueError, match="use 'min'"):
        BestTracker("eval_loss", "lowest")


def test_best_tracker_min_and_patience():
    t = BestTracker("eval_loss")
    results = [t.update(s, {"eval_loss": v}) for s, v in
               [(100, 2.0), (200, 1.5), (300, 1.5), (400, 1.7), (500, 1.4), (600, 1.6)]]
    assert results == [True, True, False, False, True, False]  # a tie (1.5) is not a new best
    assert (t.best_value, t.best_step, t.evals_since_best) == (1.4, 500, 1)
    assert not t.should_stop(2)
    t.update(700, {"eval_loss": np.float32(1.45)})
    assert t.evals_since_best == 2 and t.should_stop(2) and not t.should_stop(3)
    assert not t.should_stop(0)  # patience 0 never stops
    with pytest.raises(ValueError, match="config.task.patience = -1"):
        t.should_stop(-1)


def test_best_tracker_max_and_nan():
    t = BestTracker("eval_accuracy")
    assert not t.update(10, {"eval_accuracy": float("nan")})  # NaN is never a best
    assert t.best_value is None and t.best_step is None and t.evals_since_best == 1
    assert t.update(20, {"eval_accuracy": 0.5, "eval_loss": 9.0})
    assert not t.update(30, {"eval_accuracy": 0.4})
    assert t.update(40, {"eval_accuracy": np.array(0.75)})
    assert not t.update(50, {"eval_accuracy": float("nan")})
    assert (t.best_value, t.best_step, t.evals_since_best, t.num_evals) == (0.75, 40, 1, 5)


def test_best_tracker_missing_metric_names_the_config_field():
    t = BestTracker("eval_acc")
    with pytest.raises(ValueError) as err:
        t.update(1, {"eval_loss": 1.0, "eval_accuracy": 0.5})
    msg = str(err.value)
    assert "config.task.select_metric" in msg and "'eval_acc'" in msg
    assert "eval_accuracy, eval_loss" in msg
    assert t.num_evals == 0  # a refused update records nothing


def test_best_tracker_state_dict_round_trip_through_json():
    t = BestTracker("eval_f1")
    for step, v in [(1, 0.3), (2, 0.6), (3, 0.5)]:
        t.update(step, {"eval_f1": v})
    state = json.loads(json.dumps(t.state_dict()))
    r = BestTracker.from_state_dict(state, metric_name="eval_f1")
    assert r.state_dict() == t.state_dict()
    # The restored tracker continues exactly as the original would.
    for step, v in [(4, 0.55), (5, 0.7), (6, 0.1)]:
        assert r.update(step, {"eval_f1": v}) == t.update(step, {"eval_f1": v})
    assert r.state_dict() == t.state_dict()
    assert (r.best_value, r.best_step, r.evals_since_best) == (0.7, 5, 1)
    # A fresh tracker (no best yet) survives JSON too.
    fresh = json.loads(json.dumps(BestTracker("eval_loss").state_dict()))
    assert BestTracker.from_state_dict(fresh).best_value is None
    with pytest.raises(ValueError, match="config.task.select_metric = 'eval_loss'"):
        BestTracker.from_state_dict(state, metric_name="eval_loss")
    with pytest.raises(ValueError, match="missing"):
        BestTracker.from_state_dict({"metric_name": "eval_f1"})
