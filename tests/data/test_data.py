"""Data sources (stdlib corpus, local text, TFDS by name) and the grain pipeline."""
import json
import os
import sysconfig
import time

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

from fmjax.config import ConfigError, base_config
from fmjax.data import hash_split, local_text, packing, pipeline, sources, stdlib_corpus
from fmjax.data import streams
from fmjax.data import sp_tokenizer as tokenizer_lib, tokenizer_files
from tests.helpers import assert_batches_equal, take

SEQ_LEN = 64
STDLIB = sysconfig.get_paths()["stdlib"]


def make_config(data_dir, **data):
    config = base_config()
    config.data.tfds_data_dir = data_dir
    config.model.vocab_size = 512  # same tokenizer settings as test_tokenizer: one cached model
    config.tokenizer.train_chars = 300_000
    config.model.seq_len = SEQ_LEN
    config.train.global_batch_size = 8
    config.train.eval_batches = 3
    config.data.shuffle_buffer = 16
    for key, value in data.items():
        config.data[key] = value
    return config


@pytest.fixture(scope="module")
def stdlib_build(data_dir):
    start = time.perf_counter()
    builder = stdlib_corpus.stdlib_builder(make_config(data_dir))
    return builder, time.perf_counter() - start


@pytest.fixture(scope="module")
def tokenizer(data_dir, stdlib_build):
    return tokenizer_files.ensure_tokenizer(make_config(data_dir))


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    """42 .txt documents with unique words (so every chunk is unique); one is very long."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    texts = []
    for i in range(42):
        n_lines = 300 if i == 7 else int(rng.integers(1, 25))
        lines = [f"doc{i:03d} line {j}: " + " ".join(rng.choice(words, 4)) + "\n"
                 for j in range(n_lines)]
        texts.append("".join(lines))
        (root / f"doc{i:03d}.txt").write_text(texts[-1])
    return str(root), texts


def tiny_config(data_dir, tiny_corpus, **data):
    return make_config(data_dir, source="local_text", paths=tiny_corpus[0],
                       validation_percent=20, **data)


def document_chunks(tokenizer, texts, seq_len=SEQ_LEN):
    """{chunk tokens as tuple: document index} for every T-slice of [bos] + ids + [eos]."""
    chunks = {}
    for index, text in enumerate(texts):
        tokens = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
        for start in range(0, len(tokens), seq_len):
            chunks[tuple(tokens[start:start + seq_len])] = index
    return chunks


def row_segments(batch):
    """Yields (row index, segment tokens) for every packed segment in a batch."""
    for row, (tokens_T, segment_ids_T) in enumerate(zip(batch["tokens"], batch["segment_ids"])):
        for segment in range(1, segment_ids_T.max() + 1):
            yield row, tuple(tokens_T[segment_ids_T == segment].tolist())


# ----------------------------------------------------------------------------- stdlib corpus


def test_stdlib_corpus_has_every_file_split_by_path_hash(stdlib_build):
    builder, _ = stdlib_build
    records = builder.as_data_source()
    paths = {split: [records[split][i]["path"].decode() for i in range(len(records[split]))]
             for split in (hash_split.TRAIN, hash_split.VALIDATION)}
    total = len(paths["train"]) + len(paths["validation"])
    assert 1000 < total < 5000
    assert total == builder.info.metadata["files"]
    assert builder.info.metadata["not_utf8"] >= 1  # CPython ships latin-1 / koi8-r test files
    assert not set(paths["train"]) & set(paths["validation"])
    assert 0.02 < len(paths["validation"]) / total < 0.09  # validation_percent = 5
    for split, split_paths in paths.items():
        assert all(hash_split.split_for_key(p, 5) == split for p in split_paths)
    assert not any("site-packages" in p for p in paths["train"])
    assert "json/decoder.py" in paths["train"] + paths["validation"]


def test_stdlib_text_is_the_file_on_disk(stdlib_build, data_dir):
    builder, _ = stdlib_build
    records = builder.as_data_source(split="train")
    source = sources.get_source(make_config(data_dir), "train")
    assert len(source) == len(records)
    for index in (0, 1, len(source) - 1):
        path = os.path.join(STDLIB, records[index]["path"].decode())
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            assert source[index]["text"] == f.read()


def test_stdlib_corpus_is_built_once_and_reused(stdlib_build, data_dir):
    builder, _ = stdlib_build  # (build time: python -m fmjax.bench territory, not a test's)
    data_path = str(builder.data_path)

    def mtimes():
        return {name: os.stat(os.path.join(data_path, name)).st_mtime_ns
                for name in os.listdir(data_path)}

    before = mtimes()
    again = stdlib_corpus.stdlib_builder(make_config(data_dir))
    assert str(again.data_path) == data_path
    assert mtimes() == before and any(name.endswith("-00001") for name in before)


def test_stdlib_config_name_carries_python_version_and_percent():
    import platform
    name = stdlib_corpus.stdlib_config(5).name
    assert name.startswith(f"py{platform.python_version()}-val5-")
    assert stdlib_corpus.stdlib_config(5, stdlib_dir="/other/python").name != name


# ----------------------------------------------------------------------------- local text


def write_local_files(root):
    (root / "a.txt").write_text("first document\n\twith a tab\n")
    (root / "b.txt").write_text("second document ☃\n")
    (root / "empty.txt").write_text("  \n")
    (root / "docs.jsonl").write_text(
        json.dumps({"text": "line one doc", "id": 1}) + "\n\n"
        + json.dumps({"text": "line three doc\nspans lines", "id": 3}) + "\n"
        + json.dumps({"text": "line four doc", "id": 4}) + "\n")
    return {"first document\n\twith a tab\n", "second document ☃\n", "line one doc",
            "line three doc\nspans lines", "line four doc"}


def local_texts(config):
    texts = []
    for split in ("train", "validation"):
        try:
            source = sources.get_source(config, split)
        except ConfigError:  # a split may be empty with 5 documents
            continue
        texts += [source[i]["text"] for i in range(len(source))]
    return texts


def test_local_text_reads_txt_and_jsonl(tmp_path, data_dir):
    expected = write_local_files(tmp_path)
    config = make_config(data_dir, source="local_text", validation_percent=40,
                         paths=f"{tmp_path}/*.txt, {tmp_path}/docs.jsonl")
    texts = local_texts(config)
    assert sorted(texts) == sorted(expected)
    builder = local_text.local_text_builder(config)
    for split, info in builder.info.splits.items():
        keys = [r["path"].decode() for r in builder.as_data_source(split=split)]
        assert all(hash_split.split_for_key(k, 40) == split for k in keys)
        assert all(k in {"a.txt", "b.txt", "docs.jsonl:1", "docs.jsonl:3", "docs.jsonl:4"}
                   for k in keys)


def test_local_text_rebuilds_when_a_file_changes(tmp_path, data_dir):
    write_local_files(tmp_path)
    config = make_config(data_dir, source="local_text", paths=str(tmp_path))
    name = local_text.local_text_builder(config).builder_config.name
    assert local_text.local_text_builder(config).builder_config.name == name
    (tmp_path / "b.txt").write_text("second document, edited\n")
    assert local_text.local_text_builder(config).builder_config.name != name
    assert "second document, edited\n" in local_texts(config)


def test_local_text_errors_name_the_field_value_and_fix(tmp_path, data_dir):
    config = make_config(data_dir, source="local_text", paths=f"{tmp_path}/nothing/*.txt")
    with pytest.raises(ConfigError, match=r"data\.paths = '.*nothing/\*\.txt'.*matches no file.*"
                                          r"--config\.data\.paths="):
        sources.get_source(config, "train")
    config.data.paths = " , "
    with pytest.raises(ConfigError, match=r"data\.paths = .*no input files"):
        sources.get_source(config, "train")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text key"}\n')
    config.data.paths = str(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match=r"data\.text_field = 'text': .*bad\.jsonl:2 has no key "
                                          r"'text' \(it has: body\).*--config\.data\.text_field"):
        sources.get_source(config, "train")


def test_unknown_source_is_a_config_error(data_dir):
    config = make_config(data_dir, source="no_such_dataset_xyz")
    with pytest.raises(ConfigError, match=r"data\.source = 'no_such_dataset_xyz'.*local_text, "
                                          r"stdlib"):
        sources.get_source(config, "train")


class FmjaxTestTiny(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a TFDS catalog dataset: train + test splits, text under 'content'."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"content": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train", 5),
                "test": self._generate_examples("test", 2)}

    def _generate_examples(self, split, n):
        for i in range(n):
            yield f"{split}{i}", {"content": f"{split} text {i}\n"}


def test_tfds_source_by_name_maps_validation_to_test(data_dir):
    config = make_config(data_dir, source="fmjax_test_tiny", text_field="content")
    train = sources.get_source(config, "train")
    validation = sources.get_source(config, "validation")
    assert sorted(train[i]["text"] for i in range(len(train))) == [
        f"train text {i}\n" for i in range(5)]
    assert sorted(validation[i]["text"] for i in range(len(validation))) == [
        "test text 0\n", "test text 1\n"]
    assert validation.identity.endswith(":test")
    config.data.text_field = "text"
    with pytest.raises(KeyError, match="content"):
        sources.get_source(config, "train")[0]


def test_registry_dispatch_is_a_dict(data_dir):
    calls = []

    @sources.register_source("fmjax_test_registered")
    def open_registered(config, split):
        calls.append(split)
        return sources.TextSource([{"text": b"x"}], text_key="text", identity="registered")

    try:
        config = make_config(data_dir, source="fmjax_test_registered")
        assert sources.get_source(config, "validation")[0] == {"text": "x"}
        assert calls == ["validation"]
    finally:
        del sources.SOURCES["fmjax_test_registered"]


# ----------------------------------------------------------------------------- pipeline


def test_batches_have_shapes_dtypes_and_consistent_packing(data_dir, tokenizer):
    config = make_config(data_dir)
    batches = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                process_count=1), 4)
    for batch in batches:
        assert set(batch) == {"tokens", "segment_ids", "positions"}
        for value_BT in batch.values():
            assert value_BT.shape == (8, SEQ_LEN) and value_BT.dtype == np.int32
        for tokens_T, segment_ids_T, positions_T in zip(
                batch["tokens"], batch["segment_ids"], batch["positions"]):
            padding_T = segment_ids_T == 0
            assert np.all(np.diff(padding_T.astype(int)) >= 0), "padding only at the row's end"
            assert np.all(tokens_T[padding_T] == tokenizer.pad_id)
            used = segment_ids_T[~padding_T]
            assert used[0] == 1 and set(np.diff(used)) <= {0, 1}, "segments count 1, 2, 3, ..."
            expected_positions_T = np.zeros_like(positions_T)
            for segment in range(1, used[-1] + 1):
                (where,) = np.nonzero(segment_ids_T == segment)
                expected_positions_T[where] = np.arange(len(where))
            np.testing.assert_array_equal(positions_T, expected_positions_T)
    padding_fraction = np.mean([(b["segment_ids"] == 0).mean() for b in batches])
    assert padding_fraction < 0.1


@pytest.mark.slow
def test_segments_are_exact_chunks_of_training_documents(data_dir, tokenizer, tiny_corpus):
    config = tiny_config(data_dir, tiny_corpus)
    train = sources.get_source(config, "train")
    texts = [train[i]["text"] for i in range(len(train))]
    chunks = document_chunks(tokenizer, texts)
    seen = set()
    for batch in take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                   process_count=1), 60):
        for _, segment in row_segments(batch):
            assert segment in chunks, "a segment is not a T-aligned slice of any train document"
            seen.add(segment)
    assert seen == set(chunks)  # several epochs in: every chunk of every document was served


def test_shuffling_spreads_a_long_document_over_batches(data_dir, tokenizer, tiny_corpus):
    train = sources.get_source(tiny_config(data_dir, tiny_corpus), "train")
    chunks = document_chunks(tokenizer, [train[i]["text"] for i in range(len(train))])

    def largest_share_of_one_document(shuffle, streams):
        config = tiny_config(data_dir, tiny_corpus, shuffle=shuffle, streams=streams,
                             shuffle_buffer=64)  # doc007 is about 50 rows
        shares = []
        for batch in take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                       process_count=1), 20):
            docs = [chunks[segment] for row, segment in row_segments(batch)]
            shares.append(max(docs.count(d) for d in set(docs)) / len(docs))
        return max(shares)

    # One stream read in order: doc007 fills whole batches; shuffled rows spread it.
    assert largest_share_of_one_document(False, streams=1) == 1.0
    assert largest_share_of_one_document(True, streams=1) < 1.0
    # One stream per row (the default): a document feeds one row of each batch at most.
    assert largest_share_of_one_document(False, streams=0) <= 0.25


def test_same_seed_same_batches_other_seed_other_batches(data_dir, tokenizer, tiny_corpus):
    config = tiny_config(data_dir, tiny_corpus)
    first = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                              process_count=1), 5)
    assert_batches_equal(first, take(pipeline.make_train_iterator(
        config, tokenizer, process_index=0, process_count=1), 5))
    config.seed = 1
    other = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                              process_count=1), 5)
    assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other))


def test_restoring_state_replays_the_same_batches(data_dir, tokenizer, tiny_corpus):
    config = tiny_config(data_dir, tiny_corpus)
    iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    take(iterator, 7)
    state = json.loads(json.dumps(iterator.get_state()))  # must survive JSON (orbax stores it so)
    expected = take(iterator, 9)
    fresh = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 9), expected)


def test_orbax_saves_and_restores_the_iterator(data_dir, tokenizer, tiny_corpus, tmp_path):
    config = tiny_config(data_dir, tiny_corpus)
    iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 4)
    fresh = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(fresh, 4), expected)


@pytest.mark.slow
def test_processes_take_disjoint_rows_of_the_same_global_batches(data_dir, tokenizer, tiny_corpus):
    """The global batch of each step is the same for any process count (so a 2-host run trains
    on a 1-host run's batches and resumes on either): each process takes its rows of it."""
    config = tiny_config(data_dir, tiny_corpus)
    single = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                               process_count=1), 20)
    halves = [take(pipeline.make_train_iterator(config, tokenizer, process_index=i,
                                                process_count=2), 20) for i in (0, 1)]
    assert halves[0][0]["tokens"].shape == (4, SEQ_LEN)  # global 8 over 2 processes
    assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a}
                          for a, b in zip(*halves)], single)
    rows = [5, 1, 7, 3]  # any rows, e.g. where this process's devices hold them
    picked = take(pipeline.make_train_iterator(config, tokenizer, process_index=1,
                                               process_count=2, rows=rows), 3)
    assert_batches_equal(picked, [{k: v[rows] for k, v in b.items()} for b in single[:3]])
    evals = [pipeline.make_eval_batches(config, tokenizer, process_index=i, process_count=2)
             for i in (0, 1)]
    assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*evals)],
                         pipeline.make_eval_batches(config, tokenizer, process_index=0,
                                                    process_count=1))


def test_each_process_tokenizes_only_the_documents_of_its_streams(data_dir, tokenizer,
                                                                  tiny_corpus, monkeypatch):
    """2 processes read disjoint documents that together are every document one process reads."""
    config = tiny_config(data_dir, tiny_corpus)
    read = {}
    real_map = packing.TokenizeDocument.map

    def recording_map(self, element):
        read.setdefault(reader, set()).add(element["text"])
        return real_map(self, element)

    monkeypatch.setattr(packing.TokenizeDocument, "map", recording_map)
    for reader, (index, count) in {"p0": (0, 2), "p1": (1, 2), "one": (0, 1)}.items():
        iterator = pipeline.make_train_iterator(config, tokenizer, process_index=index,
                                                process_count=count)
        take(iterator, 3)
        iterator.close()
    assert read["p0"] and read["p1"] and not read["p0"] & read["p1"]
    assert read["p0"] | read["p1"] <= read["one"]
    assert len(read["p0"] | read["p1"]) > 0.6 * len(read["one"])  # (read-ahead differs)


def test_a_checkpoint_of_2_processes_resumes_on_1_and_back(data_dir, tokenizer, tiny_corpus):
    """Iterator states are keyed by row stream: merged, they resume any process count."""
    config = tiny_config(data_dir, tiny_corpus)
    single = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                               process_count=1), 9)
    halves = [pipeline.make_train_iterator(config, tokenizer, process_index=i, process_count=2)
              for i in (0, 1)]
    for half in halves:
        take(half, 4)
    saved = [json.loads(json.dumps(half.get_state())) for half in halves]
    one = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    one.set_state(streams.merge_states(saved))
    assert_batches_equal(take(one, 3), single[4:7])
    back = [pipeline.make_train_iterator(config, tokenizer, process_index=i, process_count=2)
            for i in (0, 1)]
    for half in back:
        half.set_state(one.get_state())
    assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a}
                          for a, b in zip(*(take(half, 2) for half in back))], single[7:9])


def test_row_streams_that_cannot_be_shared_out_name_the_field(data_dir, tokenizer, tiny_corpus):
    config = tiny_config(data_dir, tiny_corpus, streams=3)
    with pytest.raises(ConfigError, match=r"data.streams = 3: must divide .*global_batch_size = 8"):
        pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    config.data.streams = 2  # 4 rows each: 2 processes of 4 rows fit, rows 0-1 + 4-5 do not
    pipeline.make_train_iterator(config, tokenizer, process_index=1, process_count=2).close()
    with pytest.raises(ConfigError, match=r"rows \[0, 1, 4, 5\].*--config.data.streams"):
        pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=2,
                                     rows=[0, 1, 4, 5])


def test_process_rows_are_the_rows_this_process_devices_hold():
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    assert pipeline.process_rows(sharding, 8) == list(range(8))  # one process holds all
    assert pipeline.block_rows(1, 2, 8) == [4, 5, 6, 7]


def test_indivisible_global_batch_names_the_field(data_dir, tokenizer):
    config = make_config(data_dir)
    config.train.global_batch_size = 9
    with pytest.raises(ConfigError, match=r"train\.global_batch_size = 9.*2 processes"):
        pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=2)


def test_eval_batches_are_identical_every_call(data_dir, tokenizer, tiny_corpus):
    config = tiny_config(data_dir, tiny_corpus)
    validation = sources.get_source(config, "validation")
    chunks = document_chunks(tokenizer, [validation[i]["text"] for i in range(len(validation))])
    config.train.eval_batches = len(chunks) // 8 + 2  # more rows than the split has: it cycles
    first = pipeline.make_eval_batches(config, tokenizer, process_index=0, process_count=1)
    assert len(first) == config.train.eval_batches
    assert first[0]["tokens"].shape == (8, SEQ_LEN)
    assert_batches_equal(first, pipeline.make_eval_batches(config, tokenizer, process_index=0,
                                                           process_count=1))
    served = [s for b in first for _, s in row_segments(b)]
    assert set(served) == set(chunks)  # unshuffled and cycled: all of it, nothing from train
    assert len(served) > len(chunks)


def test_global_batch_assembles_sharded_arrays(data_dir, tokenizer):
    config = make_config(data_dir)
    local = next(pipeline.make_train_iterator(config, tokenizer))  # this (only) process
    mesh = jax.make_mesh((8,), ("data",))
    batch = pipeline.global_batch(local, NamedSharding(mesh, P("data", None)))
    for key, value_BT in batch.items():
        assert value_BT.shape == (8, SEQ_LEN) and value_BT.dtype == np.int32
        assert len(value_BT.sharding.device_set) == 8
        np.testing.assert_array_equal(np.asarray(value_BT), local[key])


@pytest.mark.slow
def test_worker_processes_give_the_in_process_batches(data_dir, tokenizer, tiny_corpus):
    config = tiny_config(data_dir, tiny_corpus)
    expected = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                 process_count=1), 3)
    config.data.num_workers = 1
    iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
    try:
        assert_batches_equal([{k: np.array(v) for k, v in b.items()} for b in take(iterator, 3)],
                             expected)
    finally:
        iterator.close()
