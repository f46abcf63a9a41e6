"""Sequence classification input: labelled examples -> fixed-shape grain batches.

  open_classification(config, split)             -> ClassificationSource of {'text', 'label'}
  make_classification_train_iterator(config, tok) -> endless, checkpointable batch iterator
  make_classification_eval_batches(config, tok)   -> one pass over a split, padded, as a list

Sources: a name registered with `@register_classification_builder` (the embedded
`stdlib_functions` task; a name NAME is also looked up by importing `fmjax.data.NAME`), else any
TFDS dataset by name (`glue/sst2`, `imdb_reviews`, ...) read as array_record through
`tfds.data_source`. The text comes from `config.data.text_field`, the integer class from
`config.data.label_field` (a ClassLabel gives the class names; a plain integer feature needs
`config.task.num_classes`). 'validation' falls back to 'test' for datasets without one.
Every label of an opened split is read and checked once on open (which also gives
`label_counts`); `config.data.max_examples` caps each split to its first N examples (TFDS writes
examples in a hashed order, so that is an unbiased sample).

A batch is a dict of numpy arrays: 'tokens', 'segment_ids', 'positions' int32 [B, T] (one
example per row: [bos] + encode(text), cut to T tokens keeping the start, no eos; segment_ids 1
on real tokens and 0 on padding; positions 0..n-1 on real tokens, 0 on padding), 'labels'
int32 [B] and 'weights' float32 [B] (1 for an example, 0 for a padding row). The last real
token of a row is at index segment_ids.sum() - 1. B = global_batch_size // process_count.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from fmjax.config import ConfigError
from fmjax.data import hash_split, pipeline
from fmjax.data.sources import resolve_split
from fmjax.data.text_source import as_text, prepare, tfds_data_dir

TOKENS, SEGMENT_IDS, POSITIONS, LABELS, WEIGHTS = (
    "tokens", "segment_ids", "positions", "labels", "weights")
SPLITS = (hash_split.TRAIN, hash_split.VALIDATION)
LABEL_READ_CHUNK = 1024  # records decoded per call while checking labels on open

BuilderFn = Callable[..., tfds.core.DatasetBuilder]  # config -> prepared builder
CLASSIFICATION_BUILDERS: dict[str, BuilderFn] = {}

# tfds imports its legacy (pre-`datasets/`) builders, glue among them, in one loop that stops
# at the first module failing to import (nearest_neighbors needs h5py), so without h5py
# `tfds.builder('glue/sst2')` is "not found". Importing them one by one registers the rest.
TFDS_LEGACY_MODULES = (
    "audio", "graphs", "image", "image_classification", "object_detection",
    "nearest_neighbors", "question_answering", "d4rl", "ranking", "recommendation",
    "rl_unplugged", "rlds.datasets", "robotics", "robomimic", "structured", "summarization",
    "text", "text_simplification", "time_series", "translate", "video", "vision_language")


def register_classification_builder(name: str) -> Callable[[BuilderFn], BuilderFn]:
    """Decorator: `@register_classification_builder("mine") def mine_builder(config)`.

    The function returns a prepared builder whose splits are 'train' and 'validation' (or
    'test'); its features must hold `config.data.text_field` and `config.data.label_field`.
    """
    def add(fn: BuilderFn) -> BuilderFn:
        if CLASSIFICATION_BUILDERS.get(name, fn) is not fn:
            raise ValueError(f"classification source {name!r} is already registered")
        CLASSIFICATION_BUILDERS[name] = fn
        return fn
    return add


class ClassificationSource:
    """Random access to {'text': str, 'label': int} of one split; labels checked on open.

    Implements grain's RandomAccessDataSource protocol and pickles with its records, so grain
    worker processes can read it.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, text_field: str,
                 labels: np.ndarray, class_names: Sequence[str], identity: str):
        self.records = records
        self.text_field = text_field
        self.labels = labels  # int32 [N], every value in [0, num_classes)
        self.class_names = tuple(class_names)
        self.identity = identity

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_counts(self) -> np.ndarray:
        """int64 [num_classes]: examples of each class in this split."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": as_text(self.records[index][self.text_field]),
                "label": int(self.labels[index])}

    def __repr__(self) -> str:
        return (f"ClassificationSource({self.identity}, {len(self)} examples, "
                f"classes {list(self.class_names)})")


def majority_class_accuracy(train: ClassificationSource, evaluated: ClassificationSource
                            ) -> float:
    """Accuracy on `evaluated` of always predicting the most frequent class of `train`."""
    majority = int(np.argmax(train.label_counts))
    return float(evaluated.label_counts[majority] / max(len(evaluated), 1))


# ----------------------------------------------------------------------------- sources


def open_classification(config, split: str) -> ClassificationSource:
    """`split` ('train' or 'validation') of `config.data.source` as labelled examples."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = config.data.source
    builder_fn = registered_builder(name)
    if builder_fn is not None:
        builder = builder_fn(config)
        if split not in builder.info.splits:
            raise ConfigError(
                f"config.data.validation_percent = {config.data.validation_percent}: "
                f"{builder.info.full_name} has no {split!r} examples; raise "
                "--config.data.validation_percent")
        tfds_split = capped_split(config, split, builder.info.splits[split].num_examples)
        records = builder.as_data_source(split=tfds_split)
    else:
        data_dir = tfds_data_dir(config)
        builder = prepare_tfds(tfds_builder(name, data_dir), name, data_dir)
        tfds_split = resolve_split(name, split, list(builder.info.splits))
        tfds_split = capped_split(config, tfds_split,
                                  builder.info.splits[tfds_split].num_examples)
        records = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
    identity = f"{builder.info.full_name}:{tfds_split}"
    class_names = check_features(config, builder.info.features, identity)
    labels = read_labels(config, records, len(class_names), identity)
    return ClassificationSource(records, text_field=config.data.text_field, labels=labels,
                                class_names=class_names, identity=identity)


def registered_builder(name: str) -> BuilderFn | None:
    """The builder function registered as `name`, importing `fmjax.data.<name>` if needed."""
    if name not in CLASSIFICATION_BUILDERS and name.isidentifier():
        module = f"fmjax.data.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return CLASSIFICATION_BUILDERS.get(name)


def tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """`tfds.builder(name)` in array_record form; an unknown name is a ConfigError."""
    for attempt in range(2):
        try:
            return tfds.builder(name, data_dir=data_dir, file_format="array_record")
        except tfds.core.registered.DatasetNotFoundError:
            if attempt == 0:
                import_tfds_legacy_builders()
    registered_names = ", ".join(sorted(CLASSIFICATION_BUILDERS)) or "none"
    raise ConfigError(
        f"config.data.source = {name!r}: neither a registered classification source "
        f"({registered_names}) nor a known TFDS dataset; set --config.data.source to one of "
        "those or to a TFDS name such as glue/sst2 or imdb_reviews")


def prepare_tfds(builder: tfds.core.DatasetBuilder, name: str,
                 data_dir: str) -> tfds.core.DatasetBuilder:
    """`prepare(builder)`; a build that needs TensorFlow is a ConfigError saying what to do.

    TFDS 4.9.10 still extracts and iterates downloaded archives (zip, tar) through
    `tf.io.gfile` (tensorflow/datasets#11058), so glue/*, imdb_reviews and most catalog text
    datasets cannot be BUILT without TensorFlow, though reading their array_record files can.
    """
    try:
        return prepare(builder)
    except Exception as e:  # noqa: BLE001 (re-raised unless TensorFlow is what is missing)
        if not missing_tensorflow(e):
            raise
        raise ConfigError(
            f"config.data.source = {name!r}: building {builder.info.full_name} needs "
            "TensorFlow (TFDS reads downloaded archives with tf.io.gfile, "
            "tensorflow/datasets#11058), which fmjax does not depend on; build it once where "
            f"TensorFlow is installed: `tfds build {name} --file_format=array_record "
            f"--data_dir={data_dir}` (reading it back needs no TensorFlow), or set "
            "--config.data.source=stdlib_functions") from e


def missing_tensorflow(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, ModuleNotFoundError) and error.name == "tensorflow":
            return True
        error = error.__cause__ or error.__context__
    return False


def import_tfds_legacy_builders() -> None:
    for module in TFDS_LEGACY_MODULES:
        try:
            importlib.import_module(f"tensorflow_datasets.{module}")
        except ImportError:  # an optional dependency of that module's datasets is missing
            pass


def capped_split(config, split: str, num_examples: int) -> str:
    """`split`, or `split[:max_examples]` when config.data.max_examples cuts it."""
    cap = config.data.max_examples
    if not isinstance(cap, int) or cap < 0:
        raise ConfigError(f"config.data.max_examples = {cap!r}: must be an integer >= 0 "
                          "(0 = all examples); set --config.data.max_examples=0")
    return f"{split}[:{cap}]" if 0 < cap < num_examples else split


def check_features(config, features: tfds.features.FeaturesDict, identity: str
                   ) -> tuple[str, ...]:
    """Class names of the label feature; ConfigError if a configured field is unusable."""
    names = ", ".join(features.keys())
    text_field, label_field = config.data.text_field, config.data.label_field
    for flag, field in (("text_field", text_field), ("label_field", label_field)):
        if field not in features:
            raise ConfigError(f"config.data.{flag} = {field!r}: {identity} has no such "
                              f"feature (it has: {names}); set --config.data.{flag} to one of "
                              "them")
    if not isinstance(features[text_field], tfds.features.Text):
        raise ConfigError(
            f"config.data.text_field = {text_field!r}: in {identity} it is a "
            f"{type(features[text_field]).__name__}, not Text; set --config.data.text_field "
            f"to a text feature among: {names}")
    label_feature = features[label_field]
    requested = config.task.num_classes
    if isinstance(label_feature, tfds.features.ClassLabel):
        class_names = tuple(label_feature.names)
        if requested and requested != len(class_names):
            raise ConfigError(
                f"config.task.num_classes = {requested}: {identity} has {len(class_names)} "
                f"classes ({', '.join(class_names)}); set --config.task.num_classes="
                f"{len(class_names)} or 0 to read it from the dataset")
        return class_names
    dtype = getattr(label_feature, "np_dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.integer) or label_feature.shape != ():
        raise ConfigError(
            f"config.data.label_field = {label_field!r}: in {identity} it is "
            f"{label_feature!r}, not a scalar integer class; set --config.data.label_field to "
            f"the class feature among: {names}")
    if requested <= 0:
        raise ConfigError(
            f"config.task.num_classes = {requested}: {identity}'s {label_field!r} is a plain "
            "integer without class names; set --config.task.num_classes to the number of "
            "classes")
    return tuple(str(i) for i in range(requested))


def read_labels(config, records: Sequence[dict], num_classes: int, identity: str
                ) -> np.ndarray:
    """int32 [N] labels of every record; ConfigError on one that is not a class index."""
    label_field = config.data.label_field
    labels = np.empty(len(records), np.int32)
    get_many = getattr(records, "__getitems__", None)
    for start in range(0, len(records), LABEL_READ_CHUNK):
        indices = list(range(start, min(start + LABEL_READ_CHUNK, len(records))))
        chunk = get_many(indices) if get_many else [records[i] for i in indices]
        for index, record in zip(indices, chunk):
            value = np.asarray(record[label_field])
            if (value.shape != () or not np.issubdtype(value.dtype, np.integer)
                    or not 0 <= value < num_classes):
                hint = " (-1 marks an unlabelled example in TFDS)" if value.tolist() == -1 else ""
                raise ConfigError(
                    f"config.data.label_field = {label_field!r}: example {index} of {identity} "
                    f"has label {value.tolist()!r}, not a class index in [0, {num_classes})"
                    f"{hint}; use a labelled split or set --config.data.label_field to the "
                    "class feature")
            labels[index] = value
    return labels


# ----------------------------------------------------------------------------- batches


class EncodeExample(grain.transforms.Map):
    """{'text', 'label'} -> one row: tokens/segment_ids/positions [T], labels, weights."""

    def __init__(self, tokenizer, seq_len: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len

    def map(self, example):
        ids = [self.tokenizer.bos_id, *self.tokenizer.encode(example["text"])][:self.seq_len]
        row = padding_row(self.seq_len, self.tokenizer.pad_id)
        row[TOKENS][:len(ids)] = ids
        row[SEGMENT_IDS][:len(ids)] = 1
        row[POSITIONS][:len(ids)] = np.arange(len(ids))
        row[LABELS] = np.int32(example["label"])
        row[WEIGHTS] = np.float32(1.0)
        return row


def padding_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A row that is no example: pad tokens, segment 0, label 0, weight 0."""
    return {TOKENS: np.full(seq_len, pad_id, np.int32),
            SEGMENT_IDS: np.zeros(seq_len, np.int32), POSITIONS: np.zeros(seq_len, np.int32),
            LABELS: np.int32(0), WEIGHTS: np.float32(0.0)}


def train_dataset(config, tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None,
                  source: ClassificationSource | None = None) -> grain.IterDataset:
    """This process's examples, shuffled per epoch (order = f(seed, epoch, index)), forever."""
    index, count, batch_size = pipeline.process_shard(config, process_index, process_count)
    source = source if source is not None else open_classification(config, hash_split.TRAIN)
    examples = pipeline.shard_documents(source, index, count, hash_split.TRAIN)
    return pipeline.example_batches(examples, EncodeExample(tokenizer, config.model.seq_len),
                                    config, batch_size, shuffle_purpose="classification")


def make_classification_train_iterator(config, tokenizer, *, process_index: int | None = None,
                                       process_count: int | None = None,
                                       source: ClassificationSource | None = None
                                       ) -> grain.DatasetIterator:
    """An endless, checkpointable (get_state/set_state) iterator of this process's batches."""
    return iter(train_dataset(config, tokenizer, process_index=process_index,
                              process_count=process_count, source=source))


def eval_dataset(config, tokenizer, split: str = hash_split.VALIDATION, *,
                 process_index: int | None = None, process_count: int | None = None,
                 source: ClassificationSource | None = None) -> grain.IterDataset:
    """One pass over this process's share (records[index::count]) of `split`, in order.

    Every process gets the same number of batches, ceil(ceil(N / count) / B), so multi-host
    evaluation steps stay in lockstep; rows past a process's examples are weight-0 padding.
    """
    index, count, batch_size = pipeline.process_shard(config, process_index, process_count)
    source = source if source is not None else open_classification(config, split)
    if len(source) == 0:
        raise ConfigError(f"config.data.source = {config.data.source!r}: {source.identity} "
                          "has no examples to evaluate on; use a split with examples")
    rows_per_process = pipeline.one_pass_rows(len(source), count, batch_size)
    examples = grain.MapDataset.source(source)[index::count]
    rows = examples.map(EncodeExample(tokenizer, config.model.seq_len))
    if rows_per_process > len(rows):
        padding = [padding_row(config.model.seq_len, tokenizer.pad_id)] * (
            rows_per_process - len(rows))
        rows = grain.MapDataset.concatenate([rows, grain.MapDataset.source(padding)])
    return rows.to_iter_dataset(pipeline.READ_OPTIONS).batch(batch_size, drop_remainder=True)


def make_classification_eval_batches(config, tokenizer, split: str = hash_split.VALIDATION, *,
                                     process_index: int | None = None,
                                     process_count: int | None = None,
                                     source: ClassificationSource | None = None
                                     ) -> list[dict[str, np.ndarray]]:
    """Every example of this process's share of `split` exactly once, in fixed-shape batches.

    The same list on every call; weights sum to the number of examples of this process.
    """
    return list(eval_dataset(config, tokenizer, split, process_index=process_index,
                             process_count=process_count, source=source))
