"""Weighted mixtures of sources (`config.data.mixture`): proportions, determinism, exact resume,
evaluation, config errors, and the resume / multi-host identity checks. Catalog components run
on `tfds.testing.mock_data` (tests/data/tfds_mock.py); `local_text` runs for real."""
import collections
import json
import os
import shutil
from unittest import mock

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmjax.data.identity import data_identity
from fmjax.training import loop
from fmjax.config import ConfigError, to_json
from fmjax.data import mixture, pipeline, sources
from fmjax.data import sp_tokenizer as tokenizer_lib, tokenizer_files
from fmjax.data.text_source import TextSource
from tests.helpers import assert_batches_equal, take
from tests.data.tfds_mock import (SEQ_LEN, mock_catalog, mock_config, tiny_tokenizer,
                              write_metadata)

SPEC = "c4/en:0.8,wiki40b/en:0.15,pg19:0.05"
TEXT_FEATURE = {"c4/en": "text", "wiki40b/en": "text", "pg19": "book_text"}
TAG = {"c4/en": "king", "wiki40b/en": "queen", "pg19": "play"}  # first word of their texts
NUM_DOCS = {"train": 50, "validation": 5}


def document(name, split, i):
    return f"{TAG[name]} {split} {i} " + "the realm said it was good " * (1 + i % 4)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Metadata of the three datasets and records whose first word names their dataset."""
    metadata = write_metadata(tmp_path_factory.mktemp("tfds_metadata"), names=tuple(TAG))
    records = {}
    for name in TAG:
        for split in ("train", "validation", "test"):
            n = NUM_DOCS.get(split, 1)
            records[(name, split)] = [{TEXT_FEATURE[name]: document(name, split, i)}
                                      for i in range(n)]
    return metadata, records


@pytest.fixture
def mocked(catalog):
    metadata, records = catalog
    with mock_catalog(metadata, records=records):
        yield


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tiny.model")


def make_config(spec=SPEC, **data):
    return mock_config(eval_batches=3, mixture=spec, **data)


def tag_of(text):
    return {tag: name for name, tag in TAG.items()}[text.split()[0]]


def iterator(config, tokenizer, **kwargs):
    return pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1,
                                        **kwargs)


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize("spec,why", [
    ("c4/en", r"'c4/en' is not NAME:WEIGHT"),
    ("c4/en:0.5,,pg19:0.5", "an empty entry"),
    ("", "an empty entry"),
    (":0.5", r"':0\.5' is not NAME:WEIGHT"),
    ("c4/en:lots", r"the weight of 'c4/en' is 'lots', not a number"),
    ("c4/en:0.9,pg19:0", r"the weight of 'pg19' is 0; weights must be positive; give 'pg19' "
                         r"a weight > 0 or leave it out"),
    ("c4/en:-1", r"the weight of 'c4/en' is -1"),
    ("c4/en:nan", r"the weight of 'c4/en' is nan"),
    ("c4/en:0.5,c4/en:0.5", r"'c4/en' appears twice; name each source once"),
])
def test_a_bad_spec_is_a_config_error_naming_field_value_and_fix(spec, why):
    with pytest.raises(ConfigError, match=rf"config\.data\.mixture = {spec!r}: {why}"):
        mixture.parse(spec)
    if "NAME:WEIGHT" in why or "empty" in why or "number" in why:
        with pytest.raises(ConfigError, match=r"e\.g\. --config\.data\.mixture=c4/en:0\.8,"):
            mixture.parse(spec)


def test_a_spec_parses_names_with_versions_and_relative_weights():
    components = mixture.parse(" c4/en:3.0.1:2 , local_text:0.5")
    assert components == (mixture.Component("c4/en:3.0.1", 2.0),
                          mixture.Component("local_text", 0.5))
    assert mixture.shares(components) == {"c4/en:3.0.1": 0.8, "local_text": 0.2}


def test_an_unknown_component_is_named_with_the_mixture(mocked, tokenizer):
    config = make_config("c4/en:0.5,no_such_dataset_xyz:0.5")
    with pytest.raises(ConfigError, match=r"config\.data\.mixture = 'c4/en:0\.5,"
                                          r"no_such_dataset_xyz:0\.5': component "
                                          r"'no_such_dataset_xyz' cannot be read: config\.data"
                                          r"\.source = 'no_such_dataset_xyz': neither a "
                                          r"registered fmjax source .* nor a known TFDS "
                                          r"dataset.*replace that component's name"):
        iterator(config, tokenizer)


# ----------------------------------------------------------------------------- proportions


@pytest.mark.slow
def test_mixed_documents_follow_the_weights_each_component_in_its_own_order(mocked):
    """Over 4,000 documents every component's share is within 0.5 points of its weight (grain
    interleaves deterministically: exact per 2,000 documents here), and each component's
    documents come in the order of that component shuffled alone with its own seed, so adding
    or reweighting another component never reorders it."""
    config = make_config()
    documents = pipeline.train_documents(config)
    texts = [documents[i]["text"] for i in range(4000)]
    counts = collections.Counter(tag_of(t) for t in texts)
    for component in mixture.parse(SPEC):
        assert abs(counts[component.name] / 4000 - component.weight) < 0.005, counts
    for name in TAG:
        alone = pipeline.epochs(sources.get_source(mixture.component_config(config, name),
                                                   "train"), shuffle=config.data.shuffle,
                                seed=config.seed, shuffle_purpose=f"documents/{name}")
        mine = [t for t in texts if tag_of(t) == name]
        assert mine == [alone[i]["text"] for i in range(len(mine))]
    pg19_first_epoch = [t for t in texts if tag_of(t) == "pg19"][:NUM_DOCS["train"]]
    assert sorted(pg19_first_epoch) == sorted(document("pg19", "train", i) for i in range(50))
    assert pg19_first_epoch != [document("pg19", "train", i) for i in range(50)]  # shuffled


@pytest.mark.slow
def test_batches_carry_the_weights_at_document_level(mocked, tokenizer):
    config = make_config()
    starts = collections.Counter()
    for batch in take(iterator(config, tokenizer), 150):
        for tokens_T, segment_ids_T in zip(batch["tokens"], batch["segment_ids"]):
            for segment in range(1, segment_ids_T.max() + 1):
                tokens = tokens_T[segment_ids_T == segment]
                if tokens[0] == tokenizer.bos_id:  # the first chunk of a document
                    starts[tag_of(tokenizer.decode(tokens))] += 1
    total = sum(starts.values())
    assert total > 500
    for component in mixture.parse(SPEC):
        assert abs(starts[component.name] / total - component.weight) < 0.03, starts


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_batches_other_seed_other_batches(mocked, tokenizer):
    config = make_config()
    first = take(iterator(config, tokenizer), 8)
    assert_batches_equal(first, take(iterator(config, tokenizer), 8))
    halves = [take(pipeline.make_train_iterator(config, tokenizer, process_index=i,
                                                process_count=2), 8) for i in (0, 1)]
    assert_batches_equal([{k: np.concatenate([a[k], b[k]]) for k in a}
                          for a, b in zip(*halves)], first)  # any process count
    config.seed = 1
    other = take(iterator(config, tokenizer), 8)
    assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other))


def test_restoring_grain_state_mid_stream_replays_the_same_batches(mocked, tokenizer,
                                                                   tmp_path):
    config = make_config()
    train = iterator(config, tokenizer)
    take(train, 13)  # several documents of each component consumed, rows left in the window
    state = json.loads(json.dumps(train.get_state()))  # orbax stores it as JSON
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(13, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(train)))
        manager.wait_until_finished()
    expected = take(train, 9)
    fresh = iterator(config, tokenizer)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 9), expected)
    restored = iterator(config, tokenizer)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(13, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(restored)))
    assert_batches_equal(take(restored, 9), expected)


# ----------------------------------------------------------------------------- evaluation


def test_eval_mixes_each_components_validation_split_with_the_weights(mocked, tokenizer):
    config = make_config(spec="c4/en:1,wiki40b/en:1")
    documents = pipeline.eval_documents(config)
    texts = [documents[i]["text"] for i in range(20)]
    assert texts[:4] == [document("c4/en", "validation", 0),
                         document("wiki40b/en", "validation", 0),
                         document("c4/en", "validation", 1),
                         document("wiki40b/en", "validation", 1)]  # in order, 1:1, cycled
    assert texts[10] == texts[0]
    first = pipeline.make_eval_batches(config, tokenizer, process_index=0, process_count=1)
    assert len(first) == 3
    assert_batches_equal(first, pipeline.make_eval_batches(config, tokenizer, process_index=0,
                                                           process_count=1))
    decoded = tokenizer.decode(np.concatenate([b["tokens"].reshape(-1) for b in first]))
    assert "validation" in decoded and " train " not in decoded


# ----------------------------------------------------------------------------- identity


def test_a_different_mixture_is_refused_on_resume_like_any_data_order_change():
    saved = json.loads(to_json(make_config()))
    loop.check_resume_config(saved, make_config())  # same mixture: fine
    for spec in ("c4/en:0.7,wiki40b/en:0.25,pg19:0.05", "c4/en:0.8,wiki40b/en:0.2"):
        with pytest.raises(ConfigError, match=r"different data order.*data\.mixture: "
                                              r"'c4/en:0\.8,wiki40b/en:0\.15,pg19:0\.05' -> "):
            loop.check_resume_config(saved, make_config(spec))


def test_data_identity_names_every_component_and_changes_with_them(mocked):
    identity = data_identity(make_config(), sources.get_source)
    assert identity.startswith(f"mixture={SPEC}; ")
    for name in TAG:
        assert f"{name}(" in identity and "train: 50 documents" in identity
    assert "validation: 5 documents" in identity
    assert identity == data_identity(make_config(), sources.get_source)
    assert identity != data_identity(make_config("c4/en:0.8,wiki40b/en:0.2"),
                                                 sources.get_source)


def test_the_tokenizer_trains_on_each_component_by_its_share(mocked, tmp_path, tokenizer):
    config = make_config(tfds_data_dir=str(tmp_path))  # its cache; the mock reads metadata
    config.tokenizer.train_chars = 3000
    seen = []

    def train(texts, *, output_path, **kwargs):  # records the texts, writes the tiny model
        seen.extend(texts)
        os.makedirs(os.path.dirname(output_path), exist_ok=True)
        return shutil.copy(tokenizer.path, output_path)

    with mock.patch.object(tokenizer_lib, "train_sentencepiece", train):
        tokenizer = tokenizer_files.ensure_tokenizer(config)
    assert tokenizer.path.startswith(str(tmp_path))
    chars = collections.Counter()
    for text in seen:
        chars[tag_of(text)] += len(text)
    for component in mixture.parse(SPEC):  # whole documents: at most one over its share
        assert component.weight * 3000 <= chars[component.name] < component.weight * 3000 + 160


# ----------------------------------------------------------------------------- local_text


def test_local_text_and_a_registered_source_mix_for_real(tmp_path, tokenizer):
    """No mock: local_text reads data.paths (built into array_record), a registered source
    joins it, 3:1."""
    for i in range(12):
        (tmp_path / f"note{i:02d}.txt").write_text(f"king note {i} the realm said\n")

    @sources.register_source("fmjax_test_memos")
    def open_memos(config, split):
        return TextSource([{"text": f"queen memo {split} {i}"} for i in range(7)],
                          text_key="text", identity=f"memos:{split}")

    try:
        config = make_config("local_text:3,fmjax_test_memos:1", paths=str(tmp_path),
                             tfds_data_dir=str(tmp_path / "tfds"), validation_percent=20)
        documents = pipeline.train_documents(config)
        texts = [documents[i]["text"] for i in range(400)]
        assert sum(t.startswith("king") for t in texts) == 300
        assert {t for t in texts if t.startswith("king")} <= {
            f"king note {i} the realm said\n" for i in range(12)}
        batch = next(iterator(config, tokenizer))
        assert batch["tokens"].shape == (4, SEQ_LEN)
    finally:
        del sources.SOURCES["fmjax_test_memos"]
