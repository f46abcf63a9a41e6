"""Sequence classification input: labelled examples -> fixed-shape grain batches.

  open_classification(config, split)             -> ClassificationSource of {'text', 'label'}
  make_classification_train_iterator(config, tok) -> endless, checkpointable batch iterator
  make_classification_eval_batches(config, tok)   -> one pass over a split, padded, as a list

Sources: a name registered with `@register_classification_builder` (the embedded
`stdlib_functions` task; a name NAME is also looked up by importing `fmjax.data.NAME`), else any
TFDS dataset by name (`glue/sst2`, `glue/mnli`, `imdb_reviews`, ...) read as array_record. The
text comes from `config.data.text_field`: one feature, or two comma-separated ones for a
sentence pair (`"premise,hypothesis"`); the integer class from `config.data.label_field` (a
ClassLabel gives the class names; a plain integer feature needs `config.task.num_classes`).
'validation' is `config.data.validation_split` when set (glue/mnli: validation_matched or
validation_mismatched), else 'validation', else 'test'.
Every label of an opened split is read and checked once on open (which also gives
`label_counts`); `config.data.max_examples` caps each split to its first N examples (TFDS writes
examples in a hashed order, so that is an unbiased sample).

A batch is a dict of numpy arrays: 'tokens', 'segment_ids', 'positions', 'token_types' int32
[B, T] (one example per row: [bos] + encode(text), cut to T tokens keeping the start, no eos; a
pair is [bos] + A + [eos] + B, the eos being the separator every fmjax tokenizer has (the
end-of-document token the model saw between packed documents, BERT's [SEP] position), with
the longer text shortened first when it does not fit; segment_ids 1 on real tokens and 0 on
padding; positions 0..n-1 on real tokens, 0 on padding; token_types 0 on [bos] A [eos] and 1
on B, BERT's segment A / B convention, all 0 for one text), 'labels' int32 [B] and 'weights'
float32 [B] (1 for an example, 0 for a padding row). The last real token of a row is at index
segment_ids.sum() - 1. B = global_batch_size // process_count.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from fmjax.config import ConfigError
from fmjax.registry import import_if_present
from fmjax.data import hash_split, pipeline
from fmjax.data.tfds_builders import catalog_builder, prepare_or_explain, resolve_split
from fmjax.data.text_source import as_text, tfds_data_dir

TOKENS, SEGMENT_IDS, POSITIONS, TOKEN_TYPES, LABELS, WEIGHTS = (
    "tokens", "segment_ids", "positions", "token_types", "labels", "weights")
SPLITS = (hash_split.TRAIN, hash_split.VALIDATION)
LABEL_READ_CHUNK = 1024  # records decoded per call while checking labels on open
MAX_TEXT_FIELDS = 2  # one text, or a pair (segments A and B: BERT has two token types)

BuilderFn = Callable[..., tfds.core.DatasetBuilder]  # config -> prepared builder
CLASSIFICATION_BUILDERS: dict[str, BuilderFn] = {}


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
    """Random access to {'text': str, 'label': int} of one split ({'text', 'text_pair',
    'label'} when `text_field` names two features, "a,b"); labels checked on open.

    Implements grain's RandomAccessDataSource protocol and pickles with its records, so grain
    worker processes can read it.
    """

    def __init__(self, records: Sequence[dict[str, Any]], *, text_field: str,
                 labels: np.ndarray, class_names: Sequence[str], identity: str):
        self.records = records
        self.text_field = text_field
        self.text_fields = text_fields_of(text_field)
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
        record = self.records[index]
        example = {"text": as_text(record[self.text_fields[0]]), "label": int(self.labels[index])}
        if len(self.text_fields) > 1:
            example["text_pair"] = as_text(record[self.text_fields[1]])
        return example

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
        data_dir = tfds_data_dir(config.data)
        builder = prepare_or_explain(tfds_builder(name, data_dir), name, data_dir)
        tfds_split = resolve_split(name, split, list(builder.info.splits),
                                   validation_split=config.data.validation_split)
        tfds_split = capped_split(config, tfds_split,
                                  builder.info.splits[tfds_split].num_examples)
        records = builder.as_data_source(split=tfds_split)
    identity = f"{builder.info.full_name}:{tfds_split}"
    class_names = check_features(config, builder.info.features, identity)
    labels = read_labels(config, records, len(class_names), identity)
    return ClassificationSource(records, text_field=config.data.text_field, labels=labels,
                                class_names=class_names, identity=identity)


def registered_builder(name: str) -> BuilderFn | None:
    """The builder function registered as `name`, importing `fmjax.data.<name>` if needed."""
    if name not in CLASSIFICATION_BUILDERS and name.isidentifier():
        import_if_present(f"fmjax.data.{name}")
    return CLASSIFICATION_BUILDERS.get(name)


def tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """`tfds.builder(name)` in array_record form; an unknown name is a ConfigError."""
    builder = catalog_builder(name, data_dir)
    if builder is not None:
        return builder
    registered_names = ", ".join(sorted(CLASSIFICATION_BUILDERS)) or "none"
    raise ConfigError(
        f"config.data.source = {name!r}: neither a registered classification source "
        f"({registered_names}) nor a known TFDS dataset; set --config.data.source to one of "
        "those or to a TFDS name such as glue/sst2 or imdb_reviews")


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
    text_fields = text_fields_of(text_field)
    for flag, value, fields in (("text_field", text_field, text_fields),
                                ("label_field", label_field, [label_field])):
        for field in fields:
            if field not in features:
                missing = "no such feature" if len(fields) == 1 else f"no feature {field!r}"
                raise ConfigError(
                    f"config.data.{flag} = {value!r}: {identity} has {missing} (it has: "
                    f"{names}); set --config.data.{flag} to one of them"
                    + (" (two, comma-separated, for a pair)" if flag == "text_field" else ""))
    for field in text_fields:
        if not isinstance(features[field], tfds.features.Text):
            raise ConfigError(
                f"config.data.text_field = {text_field!r}: in {identity}, {field!r} is a "
                f"{type(features[field]).__name__}, not Text; set --config.data.text_field "
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


def text_fields_of(text_field: str) -> tuple[str, ...]:
    """'sentence' -> ('sentence',); 'premise,hypothesis' -> a pair; ConfigError otherwise."""
    fields = tuple(f.strip() for f in text_field.split(","))
    if not all(fields) or len(fields) > MAX_TEXT_FIELDS or len(set(fields)) != len(fields):
        raise ConfigError(
            f"config.data.text_field = {text_field!r}: name one text feature, or two distinct "
            "ones for a sentence pair; e.g. --config.data.text_field=sentence or "
            "--config.data.text_field=premise,hypothesis")
    return fields


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
    """{'text'[, 'text_pair'], 'label'} -> one row: tokens/segment_ids/positions/token_types
    [T], labels, weights (see the module doc for the layout)."""

    def __init__(self, tokenizer, seq_len: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len

    def map(self, example):
        tok = self.tokenizer
        first = [tok.bos_id, *tok.encode(example["text"])]
        if "text_pair" in example:
            first, second = fit_pair(first + [tok.eos_id], tok.encode(example["text_pair"]),
                                     self.seq_len)
        else:
            first, second = first[:self.seq_len], []
        ids = first + second
        row = padding_row(self.seq_len, tok.pad_id)
        row[TOKENS][:len(ids)] = ids
        row[SEGMENT_IDS][:len(ids)] = 1
        row[POSITIONS][:len(ids)] = np.arange(len(ids))
        row[TOKEN_TYPES][len(first):len(ids)] = 1
        row[LABELS] = np.int32(example["label"])
        row[WEIGHTS] = np.float32(1.0)
        return row


def fit_pair(first: list[int], second: list[int], seq_len: int) -> tuple[list[int], list[int]]:
    """Both parts cut to fit seq_len (>= 3) together, the longer one shortened first (BERT's
    "longest first": a part no longer than half the row stays whole, else both get half);
    `first` ([bos] A [eos]) keeps its start and its separator, `second` its start."""
    a, b = len(first), len(second)
    if a + b > seq_len:
        if b <= seq_len // 2:
            a = seq_len - b
        elif a <= (seq_len + 1) // 2:
            b = seq_len - a
        else:
            a, b = (seq_len + 1) // 2, seq_len // 2
    return first[:a - 1] + first[-1:], second[:b]


def padding_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A row that is no example: pad tokens, segment 0, label 0, weight 0."""
    return {TOKENS: np.full(seq_len, pad_id, np.int32),
            SEGMENT_IDS: np.zeros(seq_len, np.int32), POSITIONS: np.zeros(seq_len, np.int32),
            TOKEN_TYPES: np.zeros(seq_len, np.int32),
            LABELS: np.int32(0), WEIGHTS: np.float32(0.0)}


def train_dataset(config, tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None,
                  source: ClassificationSource | None = None) -> grain.IterDataset:
    """This process's examples, shuffled per epoch (order = f(seed, epoch, index)), forever."""
    index, count, batch_size = pipeline.process_shard(config.train.global_batch_size,
                                                        process_index, process_count)
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
    index, count, batch_size = pipeline.process_shard(config.train.global_batch_size,
                                                        process_index, process_count)
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
