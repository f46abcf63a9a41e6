"""Sequence classification on a pretrained decoder: a linear head on the last real token
(fmjax/models/classifier.py), cross-entropy on the labels, and accuracy / macro precision,
recall, F1 / binary ROC AUC against the majority-class baseline (fmjax/tasks/scores.py).
"""
from __future__ import annotations

import jax
import numpy as np

from fmjax.tasks import scores
from fmjax import mesh as mesh_lib, objectives, tasks
from fmjax.data import classification as data
from fmjax.data import hash_split, pipeline
from fmjax.training.loop import EvalAbandoned
from fmjax.models.classifier import build_classifier


def _softmax_ce(logits_NC, labels_N, weights_N) -> float:
    logits_NC = logits_NC - logits_NC.max(axis=1, keepdims=True)
    logp_NC = logits_NC - np.log(np.exp(logits_NC).sum(axis=1, keepdims=True))
    ce_N = -np.take_along_axis(logp_NC, labels_N[:, None], axis=1)[:, 0]
    return float((ce_N * weights_N).sum() / max(weights_N.sum(), 1.0))


@tasks.register("classification")
def make(config, tokenizer) -> tasks.Task:
    train = data.open_classification(config, hash_split.TRAIN)
    validation = data.open_classification(config, hash_split.VALIDATION)
    num_classes = config.task.num_classes or train.num_classes
    model, model_config = build_classifier(config, num_classes)
    eval_batches = data.make_classification_eval_batches(config, tokenizer, source=validation)
    baseline = data.majority_class_accuracy(train, validation)
    predict = {}

    def evaluate(engine, params, abandon) -> dict:
        if "fn" not in predict:
            predict["fn"] = jax.jit(
                lambda p, b: (engine.model.apply({"params": p}, b["tokens"], b["segment_ids"],
                                                 b["positions"]), b["labels"], b["weights"]),
                out_shardings=mesh_lib.replicated(engine.mesh))
        logits, labels, weights = [], [], []
        for local in eval_batches:
            if abandon():
                raise EvalAbandoned()
            with mesh_lib.activate(engine.mesh):
                out = predict["fn"](params, pipeline.global_batch(local, engine.batch_sharding))
            for acc, value in zip((logits, labels, weights), jax.device_get(out)):
                acc.append(np.asarray(value))
        logits_NC, labels_N, weights_N = (np.concatenate(x) for x in (logits, labels, weights))
        metrics = {"eval_loss": _softmax_ce(logits_NC, labels_N, weights_N)}
        metrics.update(scores.classification_metrics(
            labels_N, logits_NC, num_classes, weights_N=weights_N))
        metrics["eval_majority_baseline"] = baseline
        return metrics

    return tasks.Task(
        model=model, model_config=model_config, objective=objectives.get_named("classification", config),
        backbone_path=("backbone",), head_prefixes=("head",),
        train_iter=data.make_classification_train_iterator(config, tokenizer, source=train),
        evaluate=evaluate,
        describe=(f"{train.identity}: {len(train):,} train / {len(validation):,} validation "
                  f"examples, {num_classes} classes {list(train.class_names)}; majority-class "
                  f"baseline accuracy {baseline:.3f}"))
