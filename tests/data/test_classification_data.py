"""Classification input: the embedded stdlib_functions task, TFDS datasets by name, batches.

The TFDS tests run the real path a user runs (tfds.builder -> download_and_prepare into
array_record -> tfds.data_source) on tiny files in the upstream formats (GLUE's SST-2 TSVs, the
aclImdb tarball): only the two download calls are redirected to them. `tfds.testing.mock_data`
is not used: in tfds 4.9.10 it replaces `as_data_source` with random strings and random labels
and, as the wheel ships no metadata files, leaves `builder.info.splits` empty, so neither the
validation -> test fallback nor sst2's unlabelled test split could be tested with it.
"""
import ast
import collections
import contextlib
import importlib.util
import json
import os
import sysconfig
import tarfile
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import extractor

from fmjax.config import ConfigError, base_config
from fmjax.data import classification, hash_split, sources, stdlib_functions
from fmjax.data import sp_tokenizer as tokenizer_lib
from tests.helpers import assert_batches_equal, take

SEQ_LEN = 48
STDLIB = sysconfig.get_paths()["stdlib"]


def make_config(data_dir, **data):
    config = base_config()
    config.data.tfds_data_dir = data_dir
    config.data.source = "stdlib_functions"
    config.data.validation_percent = 20
    config.model.seq_len = SEQ_LEN
    config.train.global_batch_size = 8
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def train_source(data_dir):
    return classification.open_classification(make_config(data_dir), "train")


@pytest.fixture(scope="module")
def validation_source(data_dir):
    return classification.open_classification(make_config(data_dir), "validation")


@pytest.fixture(scope="module")
def tokenizer(train_source, tmp_path_factory):
    """A small BPE model trained on 300 training functions (under a second)."""
    texts = (train_source[i]["text"] for i in range(300))
    path = tmp_path_factory.mktemp("spm") / "functions.model"
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_sentencepiece(
        texts, vocab_size=512, output_path=str(path)))


def expected_row(tokenizer, text):
    return [tokenizer.bos_id, *tokenizer.encode(text)][:SEQ_LEN]


def real_rows(batches):
    """(label, tokens of the real part) of every weight-1 row, in batch order."""
    rows = []
    for batch in batches:
        for tokens_T, segment_ids_T, label, weight in zip(
                batch["tokens"], batch["segment_ids"], batch["labels"], batch["weights"]):
            if weight:
                rows.append((int(label), tuple(tokens_T[segment_ids_T == 1].tolist())))
    return rows


def source_rows(tokenizer, source):
    return [(source[i]["label"], tuple(expected_row(tokenizer, source[i]["text"])))
            for i in range(len(source))]


# ----------------------------------------------------------------------------- stdlib_functions


def test_stdlib_functions_has_real_balanced_classes(train_source, validation_source):
    assert train_source.class_names == stdlib_functions.CLASSES
    assert train_source.num_classes >= 4
    train_counts, validation_counts = train_source.label_counts, validation_source.label_counts
    assert train_counts.sum() == len(train_source) > 1500
    assert validation_counts.sum() == len(validation_source) > 300
    assert train_counts.min() >= 100 and train_counts.max() < 0.4 * train_counts.sum()
    assert validation_counts.min() >= 10  # every class is evaluated at validation_percent=20
    baseline = classification.majority_class_accuracy(train_source, validation_source)
    assert baseline == validation_counts[np.argmax(train_counts)] / len(validation_source)


def test_stdlib_functions_split_by_file_and_labelled_by_package(data_dir):
    builder = stdlib_functions.stdlib_functions_builder(make_config(data_dir))
    paths = {}
    for split in (hash_split.TRAIN, hash_split.VALIDATION):
        records = builder.as_data_source(split=split)
        paths[split] = set()
        for record in records:
            path = record["path"].decode()
            assert stdlib_functions.CLASSES[record["label"]] == path.split(os.sep)[0]
            assert hash_split.split_for_key(path, 20) == split
            assert "/test/" not in path and "/tests/" not in path
            text = record["text"].decode()
            assert text.startswith(("def ", "async def ")) and text.count("\n") >= 2
            paths[split].add(path)
        assert builder.info.metadata["label_counts"][split] == dict(zip(
            stdlib_functions.CLASSES,
            np.bincount([r["label"] for r in records], minlength=6).tolist()))
    assert paths["train"] and paths["validation"] and not paths["train"] & paths["validation"]


def test_function_sources_are_the_ast_segments_dedented():
    source = open(os.path.join(STDLIB, "asyncio", "locks.py"), encoding="utf-8").read()
    source += ("\nif True:\n    class Late:\n        async def m(self):\n"
               "            é = '☃'\n            return é\n")  # end_col_offset counts bytes
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}

    def ancestors(node):
        while node in parents:
            node = parents[node]
            yield node

    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    def dedent(segment):  # the def line's indentation off every line that has it
        indent = " " * (len(segment) - len(segment.lstrip(" ")))
        return "".join(line.removeprefix(indent) for line in segment.splitlines(True))

    expected = [dedent(ast.get_source_segment(source, node, padded=True))
                for node in sorted((n for n in ast.walk(tree) if isinstance(n, functions)),
                                   key=lambda n: n.lineno)
                if node.end_lineno - node.lineno >= 2  # at least 3 lines
                and not any(isinstance(a, functions) for a in ancestors(node))
                and sum(isinstance(a, ast.ClassDef) for a in ancestors(node)) <= 1]
    found = [text for _, text in stdlib_functions.function_sources(source)]
    assert found == expected and len(found) > 20
    assert found[-1] == "async def m(self):\n    é = '☃'\n    return é"


def test_too_few_held_out_files_is_a_config_error(data_dir):
    config = make_config(data_dir, validation_percent=5)
    with pytest.raises(ConfigError, match=r"data\.validation_percent = 5: .*holds no function "
                                          r"of .*--config\.data\.validation_percent=20"):
        classification.open_classification(config, "train")


def test_stdlib_functions_is_also_a_text_source(data_dir, validation_source):
    texts = sources.get_source(make_config(data_dir), "validation")
    assert len(texts) == len(validation_source)
    assert texts[3]["text"] == validation_source[3]["text"]


def test_max_examples_caps_each_split(data_dir, train_source):
    capped = classification.open_classification(make_config(data_dir, max_examples=40), "train")
    assert len(capped) == 40 and capped.identity.endswith("train[:40]")
    assert [capped[i] for i in (0, 39)] == [train_source[i] for i in (0, 39)]


# ----------------------------------------------------------------------------- batches


def test_eval_batches_hold_every_validation_example_once(data_dir, tokenizer,
                                                         validation_source):
    config = make_config(data_dir)
    batches = classification.make_classification_eval_batches(
        config, tokenizer, process_index=0, process_count=1, source=validation_source)
    assert sum(b["weights"].sum() for b in batches) == len(validation_source)
    assert len(batches) == -(-len(validation_source) // 8)  # 691 -> 87 batches, 5 padding rows
    for batch in batches:
        assert batch["tokens"].shape == (8, SEQ_LEN) and batch["labels"].shape == (8,)
        assert batch["tokens"].dtype == batch["labels"].dtype == np.int32
        assert batch["weights"].dtype == np.float32
        padding = batch["weights"] == 0
        assert np.all(batch["tokens"][padding] == tokenizer.pad_id)
        assert np.all(batch["segment_ids"][padding] == 0)
    assert batches[-1]["weights"].min() == 0  # the split is not a multiple of 8
    assert real_rows(batches) == source_rows(tokenizer, validation_source)  # in order, once


def test_processes_evaluate_disjoint_shares_in_lockstep(data_dir, tokenizer, train_source):
    config = make_config(data_dir)
    source = classification.ClassificationSource(  # 21 examples: 11 + 10 over 2 processes
        train_source.records, text_field="text", labels=train_source.labels[:21],
        class_names=train_source.class_names, identity="first 21")
    shares = [classification.make_classification_eval_batches(
        config, tokenizer, process_index=i, process_count=2, source=source) for i in (0, 1)]
    assert [len(s) for s in shares] == [3, 3]  # ceil(11 / 4): the same count on both
    assert shares[0][0]["tokens"].shape == (4, SEQ_LEN)
    served = real_rows(shares[0]) + real_rows(shares[1])
    assert sorted(served) == sorted(source_rows(tokenizer, source))


def test_rows_are_bos_and_the_truncated_encoding(data_dir, tokenizer, train_source):
    config = make_config(data_dir, shuffle=False, max_examples=40)
    source = classification.open_classification(config, "train")
    batches = take(classification.make_classification_train_iterator(
        config, tokenizer, process_index=0, process_count=1), 5)
    assert real_rows(batches) == source_rows(tokenizer, source)  # unshuffled: source order
    truncated = 0
    for batch in batches:
        assert np.all(batch["weights"] == 1) and np.all(batch["tokens"][:, 0] == tokenizer.bos_id)
        for segment_ids_T, positions_T in zip(batch["segment_ids"], batch["positions"]):
            n = int(segment_ids_T.sum())
            assert np.all(segment_ids_T[:n] == 1) and np.all(segment_ids_T[n:] == 0)
            np.testing.assert_array_equal(positions_T, np.r_[np.arange(n), np.zeros(SEQ_LEN - n)])
            truncated += n == SEQ_LEN
    assert 0 < truncated < 40  # long functions are cut, short ones padded


def test_train_epochs_are_shuffled_permutations(data_dir, tokenizer):
    config = make_config(data_dir, max_examples=40)
    source = classification.open_classification(config, "train")
    batches = take(classification.make_classification_train_iterator(
        config, tokenizer, process_index=0, process_count=1), 10)
    epochs = real_rows(batches[:5]), real_rows(batches[5:])
    expected = source_rows(tokenizer, source)
    for epoch in epochs:
        assert sorted(epoch) == sorted(expected) and epoch != expected
    assert epochs[0] != epochs[1]  # each epoch has its own order


def test_shuffling_is_a_pure_function_of_the_seed(data_dir, tokenizer, train_source):
    def first_batches(seed):
        config = make_config(data_dir)
        config.seed = seed
        return take(classification.make_classification_train_iterator(
            config, tokenizer, process_index=0, process_count=1, source=train_source), 3)

    assert_batches_equal(first_batches(0), first_batches(0))
    assert real_rows(first_batches(0)) != real_rows(first_batches(1))


def test_restoring_state_replays_the_same_batches(data_dir, tokenizer, train_source):
    config = make_config(data_dir)
    iterator = classification.make_classification_train_iterator(
        config, tokenizer, process_index=0, process_count=1, source=train_source)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # orbax stores it as JSON
    expected = take(iterator, 4)
    fresh = classification.make_classification_train_iterator(
        config, tokenizer, process_index=0, process_count=1, source=train_source)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 4), expected)


def test_processes_train_on_disjoint_shards(data_dir, tokenizer):
    config = make_config(data_dir, max_examples=40)
    source = classification.open_classification(config, "train")
    shards = [real_rows(take(classification.make_classification_train_iterator(
        config, tokenizer, process_index=i, process_count=2), 5)) for i in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(source_rows(tokenizer, source))


# ----------------------------------------------------------------------------- TFDS by name

SST2 = {"train": [("a gripping , funny film", 1), ("dull and far too long", 0),
                  ("the cast is wonderful", 1), ("a mess of a plot", 0),
                  ("moving and beautifully shot", 1), ("i want my two hours back", 0)],
        "dev": [("smart , sharp and warm", 1), ("flat jokes everywhere", 0),
                ("an instant classic", 1)],
        "test": ["unlabelled one", "unlabelled two"]}
IMDB = {"train": [("A superb film, with a great cast.", "pos"),
                  ("Terrible pacing; I left early.", "neg"),
                  ("Loved every minute of it.", "pos")],
        "test": [("Boring and predictable.", "neg"), ("A moving, honest story.", "pos")]}


def write_sst2(root):
    """The files of SST-2.zip, extracted: TSVs with a header; test has no label column."""
    (root / "SST-2").mkdir(parents=True)
    for split in ("train", "dev"):
        rows = "".join(f"{text}\t{label}\n" for text, label in SST2[split])
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    rows = "".join(f"{i}\t{text}\n" for i, text in enumerate(SST2["test"]))
    (root / "SST-2" / "test.tsv").write_text("index\tsentence\n" + rows)
    return str(root)


def write_imdb(root):
    """aclImdb_v1.tar.gz: aclImdb/{train,test}/{pos,neg}/ID_RATING.txt plus train/unsup."""
    files = root / "files"
    for split, examples in IMDB.items():
        for i, (text, label) in enumerate(examples):
            (files / "aclImdb" / split / label).mkdir(parents=True, exist_ok=True)
            (files / "aclImdb" / split / label / f"{i}_7.txt").write_text(text)
    (files / "aclImdb" / "train" / "unsup").mkdir()
    (files / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("No label here.")
    archive = root / "aclImdb_v1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(files / "aclImdb", arcname="aclImdb")
    return str(archive)


TFDS_ITER_ARCHIVE = tfds.download.DownloadManager.iter_archive


def iter_tar_without_tensorflow(self, path):
    """DownloadManager.iter_archive, TF-free: TFDS opens the archive with tf.io.gfile."""
    with open(path, "rb") as f:
        yield from extractor.iter_tar(f)


@contextlib.contextmanager
def local_downloads(root, *, archives_need_tensorflow=False):
    """The DownloadManager calls of these two builders read local files; nothing else changes."""
    local = {"https://dl.fbaipublicfiles.com/glue/data/SST-2.zip": write_sst2(root / "sst2"),
             "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz": write_imdb(root)}
    dm = tfds.download.DownloadManager
    with contextlib.ExitStack() as stack:
        for method in ("download", "download_and_extract"):  # sst2's zip: already extracted
            stack.enter_context(mock.patch.object(dm, method, lambda self, url: local[url]))
        stack.enter_context(mock.patch.object(dm, "iter_archive", TFDS_ITER_ARCHIVE
                                              if archives_need_tensorflow
                                              else iter_tar_without_tensorflow))
        yield


@pytest.fixture(scope="module")
def fake_downloads(tmp_path_factory):
    with local_downloads(tmp_path_factory.mktemp("downloads")):
        yield


def texts_and_labels(source):
    return sorted((source[i]["text"], source[i]["label"]) for i in range(len(source)))


def test_glue_sst2_reads_sentences_and_uses_labelled_validation(data_dir, fake_downloads,
                                                                tokenizer):
    config = make_config(data_dir, source="glue/sst2", text_field="sentence")
    train = classification.open_classification(config, "train")
    validation = classification.open_classification(config, "validation")
    assert train.class_names == ("negative", "positive")
    assert texts_and_labels(train) == sorted(SST2["train"])
    assert texts_and_labels(validation) == sorted(SST2["dev"])
    assert validation.identity.endswith(":validation")  # not 'test', whose labels are -1
    assert list(train.label_counts) == [3, 3]
    test_records = tfds.data_source("glue/sst2", split="test", data_dir=data_dir)
    with pytest.raises(ConfigError, match=r"data\.label_field = 'label': example 0 of "
                                          r"glue/sst2:test has label -1.*unlabelled"):
        classification.read_labels(config, test_records, 2, "glue/sst2:test")
    batches = classification.make_classification_eval_batches(
        config, tokenizer, process_index=0, process_count=1)
    assert len(batches) == 1 and list(batches[0]["weights"]) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert sorted(real_rows(batches)) == sorted(source_rows(tokenizer, validation))


def test_imdb_reviews_falls_back_to_test_for_validation(data_dir, fake_downloads):
    config = make_config(data_dir, source="imdb_reviews", text_field="text")
    train = classification.open_classification(config, "train")
    validation = classification.open_classification(config, "validation")
    names = ("neg", "pos")
    assert train.class_names == names
    assert texts_and_labels(train) == sorted((t, names.index(y)) for t, y in IMDB["train"])
    assert texts_and_labels(validation) == sorted((t, names.index(y)) for t, y in IMDB["test"])
    assert validation.identity.endswith(":test")


def test_tfds_config_errors_name_the_field_value_and_fix(data_dir, fake_downloads):
    config = make_config(data_dir, source="glue/sst2", text_field="text")
    with pytest.raises(ConfigError, match=r"data\.text_field = 'text': glue/sst2/.*has no such "
                                          r"feature \(it has: .*sentence.*--config\.data\."
                                          r"text_field"):
        classification.open_classification(config, "train")
    config = make_config(data_dir, source="glue/sst2", text_field="sentence", label_field="idx")
    with pytest.raises(ConfigError, match=r"task\.num_classes = 0: .*'idx' is a plain integer"):
        classification.open_classification(config, "train")
    config = make_config(data_dir, source="imdb_reviews")
    config.task.num_classes = 3
    with pytest.raises(ConfigError, match=r"task\.num_classes = 3: .* has 2 classes \(neg, "
                                          r"pos\); set --config\.task\.num_classes=2"):
        classification.open_classification(config, "train")
    config = make_config(data_dir, source="no_such_dataset_xyz")
    with pytest.raises(ConfigError, match=r"data\.source = 'no_such_dataset_xyz'.*"
                                          r"stdlib_functions"):
        classification.open_classification(config, "train")
    config = make_config(data_dir, max_examples=-1)
    with pytest.raises(ConfigError, match=r"data\.max_examples = -1"):
        classification.open_classification(config, "train")


def test_label_counts_are_counted_per_class(data_dir, fake_downloads):
    config = make_config(data_dir, source="imdb_reviews")
    counts = collections.Counter(y for _, y in IMDB["train"])
    train = classification.open_classification(config, "train")
    assert list(train.label_counts) == [counts["neg"], counts["pos"]]


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed: TFDS can read the archive")
def test_a_build_that_needs_tensorflow_says_how_to_build_it(tmp_path):
    config = make_config(str(tmp_path / "tfds"), source="imdb_reviews")
    with local_downloads(tmp_path, archives_need_tensorflow=True):
        with pytest.raises(ConfigError, match=r"data\.source = 'imdb_reviews': building .*needs "
                                              r"TensorFlow.*`tfds build imdb_reviews "
                                              r"--file_format=array_record --data_dir="):
            classification.open_classification(config, "train")


@pytest.mark.parametrize("name,source,validation_split", [("sst2", "glue/sst2", "validation"),
                                                          ("imdb", "imdb_reviews", "test")])
def test_shipped_finetune_configs_read_their_datasets(data_dir, fake_downloads, tokenizer, name,
                                                      source, validation_split):
    """configs/finetune/{sst2,imdb}.py, as shipped, on mock downloads of the real builders."""
    from fmjax.config import sibling_config
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config = sibling_config(os.path.join(root, "configs", "finetune", "x.py"), name)
    assert config.task.name == "classification" and config.data.source == source
    config.data.tfds_data_dir = data_dir
    config.model.seq_len = SEQ_LEN
    config.train.global_batch_size = 4
    train = classification.open_classification(config, "train")
    validation = classification.open_classification(config, "validation")
    assert train.num_classes == 2 and len(train) > 0
    assert validation.identity.endswith(":" + validation_split)
    batch = next(iter(classification.make_classification_train_iterator(
        config, tokenizer, source=train, process_index=0, process_count=1)))
    assert batch["tokens"].shape == (4, SEQ_LEN) and set(batch["labels"]) <= {0, 1}
