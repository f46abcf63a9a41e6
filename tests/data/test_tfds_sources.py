"""Named TFDS datasets (c4/en, lm1b, wiki40b/en, pg19, tiny_shakespeare, glue/mnli) through the
real pipeline code, on `tfds.testing.mock_data` (tests/data/tfds_mock.py says how: there is no
download here)."""
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fmjax.config import ConfigError, sibling_config
from fmjax.data import classification, pipeline, sources, tfds_text
from fmjax.data.text_source import local_cache_dir, tfds_data_dir
from fmjax.data import sp_tokenizer as tokenizer_lib
from tests.helpers import assert_batches_equal, take
from tests.data.tfds_mock import (SEQ_LEN, mock_catalog, mock_config, tiny_tokenizer,
                              write_metadata)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMED = ("c4/en", "lm1b", "wiki40b/en", "pg19", "tiny_shakespeare")


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    return write_metadata(tmp_path_factory.mktemp("tfds_metadata"))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("spm") / "tiny.model")


def make_config(source, **data):
    return mock_config(eval_batches=2, source=source, **data)


def texts_of(source):
    return [source[i]["text"] for i in range(len(source))]


def segments(batches):
    """Every packed segment's tokens, batch by batch, row by row."""
    for batch in batches:
        for tokens_T, segment_ids_T in zip(batch["tokens"], batch["segment_ids"]):
            for segment in range(1, segment_ids_T.max() + 1):
                yield tuple(tokens_T[segment_ids_T == segment].tolist())


def chunks_of(tokenizer, texts, seq_len=SEQ_LEN):
    """Every T-slice of [bos] + ids + [eos] of each text."""
    chunks = set()
    for text in texts:
        tokens = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
        chunks.update(tuple(tokens[s:s + seq_len]) for s in range(0, len(tokens), seq_len))
    return chunks


# ----------------------------------------------------------------------------- the table


def test_the_table_names_real_text_features_of_the_real_builders(metadata):
    for name in NAMED:
        features = tfds.builder(name, data_dir=metadata).info.features
        spec = tfds_text.NAMED[name]
        assert isinstance(features[spec.text_feature], tfds.features.Text), name
    assert tfds_text.NAMED["pg19"].text_feature == "book_text"
    assert tfds_text.NAMED["lm1b"].validation_split == "test"  # lm1b has no validation split
    assert tfds_text.spec_for("c4/en:3.0.1", "x") is tfds_text.NAMED["c4/en"]
    assert tfds_text.spec_for("ag_news_subset", "description").text_feature == "description"


@pytest.mark.parametrize("name", NAMED)
def test_named_dataset_runs_the_real_pipeline_on_its_own_text_feature(metadata, tokenizer,
                                                                       name):
    """data.text_field is deliberately wrong: the table, not the user, knows the feature."""
    config = make_config(name, text_field="no_such_feature")
    feature = tfds_text.NAMED[name].text_feature
    expected_split = tfds_text.NAMED[name].validation_split
    with mock_catalog(metadata):
        train, validation = (sources.get_source(config, s) for s in ("train", "validation"))
        raw = tfds.builder(name, data_dir=metadata).as_data_source(split="train")
        assert texts_of(train) == [r[feature] for r in raw] and len(train) == 16
        assert train.identity.endswith(":train")
        assert validation.identity.endswith(f":{expected_split}")
        batches = take(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                    process_count=1), 6)
        evals = pipeline.make_eval_batches(config, tokenizer, process_index=0, process_count=1)
    for batch in batches + evals:
        assert set(batch) == {"tokens", "segment_ids", "positions"}
        assert batch["tokens"].shape == (4, SEQ_LEN)
    assert set(segments(batches)) <= chunks_of(tokenizer, texts_of(train))
    assert set(segments(evals)) <= chunks_of(tokenizer, texts_of(validation))


def test_a_tfds_name_not_in_the_table_reads_data_text_field(metadata, tokenizer):
    config = make_config("ag_news_subset", text_field="description")
    with mock_catalog(metadata):
        validation = sources.get_source(config, "validation")
        raw = tfds.builder("ag_news_subset", data_dir=metadata).as_data_source(split="test")
        assert validation.identity.endswith(":test")  # no validation split: test
        assert texts_of(validation) == [r["description"] for r in raw]
        config.data.text_field = "text"
        with pytest.raises(KeyError, match=r"no feature 'text' \(it has: .*description"):
            sources.get_source(config, "train")[0]


def test_validation_split_is_a_config_choice(metadata):
    with mock_catalog(metadata):
        config = make_config("tiny_shakespeare", validation_split="test")
        assert sources.get_source(config, "validation").identity.endswith(":test")
        config.data.validation_split = "dev"
        with pytest.raises(ConfigError, match=r"data\.validation_split = 'dev': "
                                              r"tiny_shakespeare has splits \['train', "
                                              r"'validation', 'test'\]; set --config\.data\."
                                              r"validation_split"):
            sources.get_source(config, "validation")


def test_a_gs_data_dir_reaches_tfds_untouched(metadata):
    config = make_config("lm1b", tfds_data_dir="gs://fmjax-bucket/tfds")
    assert tfds_data_dir(config.data) == "gs://fmjax-bucket/tfds"
    assert local_cache_dir(config.data) == os.path.expanduser("~/.cache/fmjax/tfds")
    with mock_catalog(metadata), mock.patch.object(tfds, "builder", wraps=tfds.builder) as spy:
        sources.get_source(config, "train")
    assert spy.call_args.kwargs["data_dir"] == "gs://fmjax-bucket/tfds"
    path = tokenizer_lib.tokenizer_cache_path(config, "lm1b/1.1.0:train")
    assert path.startswith(local_cache_dir(config.data)) and "gs:" not in path


def test_a_named_dataset_is_never_downloaded_the_error_says_how_to_build_it(tmp_path):
    config = make_config("pg19", tfds_data_dir=str(tmp_path))
    (tmp_path / "pg19" / "0.1.0").mkdir(parents=True)  # an older copy is there
    with pytest.raises(ConfigError, match=r"data\.source = 'pg19': pg19/0\.1\.1 is not "
                                          r"prepared in config\.data\.tfds_data_dir = .*"
                                          r"holds version\(s\) 0\.1\.0: set --config\.data\."
                                          r"source=pg19:0\.1\.0.*`tfds build pg19 "
                                          r"--file_format=array_record --data_dir=.*"
                                          r"deepmind-gutenberg"):
        sources.get_source(config, "train")
    config.data.source = "c4/en"
    with pytest.raises(ConfigError, match=r"c4/en/3\.1\.0 is not prepared.*Apache Beam"):
        sources.get_source(config, "train")


# ----------------------------------------------------------------------------- wiki40b

WIKI40B_ARTICLE = (
    "\n_START_ARTICLE_\nJoseph Bradley (footballer)\n_START_PARAGRAPH_\nJoseph Bradley (born "
    "1 March 1900) was an English footballer._NEWLINE_He played as a half back.\n"
    "_START_SECTION_\nCareer\n_START_PARAGRAPH_\nBradley joined Rotherham County in 1921."
    "_NEWLINE_He later played for Barnsley._NEWLINE_\n")
WIKI40B_PLAIN = (
    "Joseph Bradley (footballer)\n\nJoseph Bradley (born 1 March 1900) was an English "
    "footballer.\nHe played as a half back.\n\nCareer\n\nBradley joined Rotherham County in "
    "1921.\nHe later played for Barnsley.\n")


def test_wiki40b_markers_become_plain_text():
    assert tfds_text.wiki40b_plain_text(WIKI40B_ARTICLE) == WIKI40B_PLAIN
    assert tfds_text.wiki40b_plain_text("no markers at all") == "no markers at all"


def test_wiki40b_documents_reach_the_pipeline_cleaned(metadata, tokenizer):
    records = {("wiki40b/en", split): [{"text": WIKI40B_ARTICLE, "wikidata_id": "Q1",
                                        "version_id": "1"}] * 4
               for split in ("train", "validation")}
    config = make_config("wiki40b/en", shuffle=False)
    with mock_catalog(metadata, records=records):
        assert sources.get_source(config, "train")[0]["text"] == WIKI40B_PLAIN
        batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                  process_count=1))
    first = batch["tokens"][0][batch["segment_ids"][0] == 1]
    assert tokenizer.decode(first) == WIKI40B_PLAIN[:len(tokenizer.decode(first))]
    assert "_START_" not in tokenizer.decode(batch["tokens"].reshape(-1))


# ----------------------------------------------------------------------------- 1 MB documents


def test_one_huge_document_per_split_streams_without_stalling(metadata, tokenizer):
    """tiny_shakespeare stores each split as ONE document (train 1 MB): tokenized once, its
    T-token chunks fill rows in order (measured: the first batch in about 2.4 s)."""
    sentence = "the king and queen said that it was good to see a play.\n"
    train_text = (sentence * (1_000_000 // len(sentence) + 1))[:1_000_000]
    records = {("tiny_shakespeare", "train"): [{"text": train_text}],
               ("tiny_shakespeare", "validation"): [{"text": train_text[:55_000]}]}
    config = make_config("tiny_shakespeare", shuffle=False, streams=1)
    with mock_catalog(metadata, records=records), mock.patch.dict(  # one document, not speeches
            tfds_text.NAMED, {"tiny_shakespeare": tfds_text.TfdsText("text")}):
        iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0,
                                                process_count=1)
        batches = take(iterator, 50)
        evals = pipeline.make_eval_batches(config, tokenizer, process_index=0, process_count=1)
    tokens = [tokenizer.bos_id, *tokenizer.encode(train_text), tokenizer.eos_id]
    assert len(tokens) > 100_000
    served = list(segments(batches))
    assert served == [tuple(tokens[s:s + SEQ_LEN]) for s in range(0, 200 * SEQ_LEN, SEQ_LEN)]
    assert all(b["segment_ids"].min() == 1 for b in evals)  # full rows, no padding


# ----------------------------------------------------------------------------- glue/mnli

MNLI = {"train": [("A man is playing a guitar on stage.", "A person plays music.", 0),
                  ("A woman reads in the park.", "The woman is asleep at home.", 2),
                  ("Two dogs run on the beach.", "The dogs are brown.", 1),
                  ("Children are building a sandcastle.", "Kids play outside.", 0)],
        "validation_matched": [("The cat sat on the mat.", "A cat is sitting.", 0),
                               ("He cooked dinner.", "He ordered takeout instead.", 2)],
        "validation_mismatched": [("The report was filed late.", "It was on time.", 2)]}


PAIR_SEQ_LEN = 64


def mnli_records():
    return {("glue/mnli", split): [{"premise": p, "hypothesis": h, "label": y, "idx": i}
                                   for i, (p, h, y) in enumerate(examples)]
            for split, examples in MNLI.items()}


def mnli_config(**data):
    config = sibling_config(os.path.join(ROOT, "configs", "finetune", "x.py"), "mnli")
    config.data.tfds_data_dir = "/nonexistent/tfds"
    config.model.seq_len = PAIR_SEQ_LEN
    config.train.global_batch_size = 4
    for key, value in data.items():
        config.data[key] = value
    return config


def test_mnli_config_reads_premise_hypothesis_pairs(metadata, tokenizer):
    config = mnli_config()
    assert config.data.text_field == "premise,hypothesis"
    with mock_catalog(metadata, records=mnli_records()):
        train = classification.open_classification(config, "train")
        validation = classification.open_classification(config, "validation")
        config.data.validation_split = "validation_mismatched"
        mismatched = classification.open_classification(config, "validation")
        batches = classification.make_classification_eval_batches(
            config, tokenizer, process_index=0, process_count=1, source=validation)
    assert train.class_names == ("entailment", "neutral", "contradiction")
    assert validation.identity.endswith(":validation_matched")
    assert mismatched.identity.endswith(":validation_mismatched") and len(mismatched) == 1
    assert train[1] == {"text": MNLI["train"][1][0], "text_pair": MNLI["train"][1][1],
                        "label": 2}
    batch = batches[0]
    for row, (premise, hypothesis, label) in enumerate(MNLI["validation_matched"]):
        a = [tokenizer.bos_id, *tokenizer.encode(premise), tokenizer.eos_id]
        b = tokenizer.encode(hypothesis)
        n = len(a) + len(b)
        assert n <= PAIR_SEQ_LEN
        np.testing.assert_array_equal(batch["tokens"][row, :n], a + b)
        np.testing.assert_array_equal(batch["token_types"][row], [0] * len(a) + [1] * len(b)
                                      + [0] * (PAIR_SEQ_LEN - n))
        np.testing.assert_array_equal(batch["segment_ids"][row],
                                      [1] * n + [0] * (PAIR_SEQ_LEN - n))
        assert batch["labels"][row] == label and batch["weights"][row] == 1
    assert batch["weights"][2:].sum() == 0 and batch["token_types"][2:].sum() == 0


def test_a_long_pair_is_cut_longest_first_keeping_both_parts_and_the_separator(tokenizer):
    encode = classification.EncodeExample(tokenizer, 16)
    long_premise = "the king and queen said that it was good to see a play " * 3
    row = encode.map({"text": long_premise, "text_pair": "a play.", "label": 1})
    b = tokenizer.encode("a play.")
    n_a = 16 - len(b)
    a = [tokenizer.bos_id, *tokenizer.encode(long_premise)][:n_a - 1] + [tokenizer.eos_id]
    np.testing.assert_array_equal(row["tokens"], a + b)
    np.testing.assert_array_equal(row["token_types"], [0] * n_a + [1] * len(b))
    assert classification.fit_pair(list(range(30)), list(range(100, 140)), 16) == (
        list(range(7)) + [29], list(range(100, 108)))  # both longer than half: 8 + 8
    single = encode.map({"text": long_premise, "label": 0})
    assert single["token_types"].sum() == 0 and single["segment_ids"].sum() == 16


def test_pair_and_text_field_errors_name_the_field_and_fix(metadata):
    with mock_catalog(metadata, records=mnli_records()):
        for bad in ("premise,hypothesis,label", "premise,", "premise,premise"):
            with pytest.raises(ConfigError, match=r"data\.text_field = .*two distinct ones "
                                                  r"for a sentence pair"):
                classification.open_classification(mnli_config(text_field=bad), "train")
        with pytest.raises(ConfigError, match=r"data\.text_field = 'premise,hypo': .*no "
                                              r"feature 'hypo' \(it has: .*hypothesis"):
            classification.open_classification(mnli_config(text_field="premise,hypo"),
                                               "train")
        with pytest.raises(ConfigError, match=r"data\.validation_split = 'validation': "
                                              r"glue/mnli has splits"):
            classification.open_classification(mnli_config(validation_split="validation"),
                                               "validation")
        with pytest.raises(ConfigError, match=r"data\.source = 'glue/mnli' has splits .*"
                                              r"--config\.data\.validation_split"):
            classification.open_classification(mnli_config(validation_split=""), "validation")


def test_pair_training_batches_are_deterministic(metadata, tokenizer):
    config = mnli_config()
    with mock_catalog(metadata, records=mnli_records()):
        first = take(classification.make_classification_train_iterator(
            config, tokenizer, process_index=0, process_count=1), 3)
        again = take(classification.make_classification_train_iterator(
            config, tokenizer, process_index=0, process_count=1), 3)
    assert_batches_equal(first, again)
    assert all(b["token_types"].max() == 1 for b in first)


def test_tiny_shakespeare_is_read_as_its_speeches(metadata):
    """Its one stored text is cut at blank lines, so S row streams share out its speeches
    instead of each reading the whole text."""
    text = "First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\n\nFirst Citizen:\nYou.\n"
    records = {("tiny_shakespeare", split): [{"text": text}] for split in ("train", "validation")}
    with mock_catalog(metadata, records=records):
        source = sources.get_source(make_config("tiny_shakespeare"), "train")
    assert [source[i]["text"] for i in range(len(source))] == [
        "First Citizen:\nBefore we proceed.", "All:\nSpeak, speak.", "\nFirst Citizen:\nYou.\n"]


def test_fewer_documents_than_row_streams_is_refused(metadata, tokenizer):
    records = {("lm1b", split): [{"text": f"sentence {i}"} for i in range(3)]
               for split in ("train", "test")}
    with mock_catalog(metadata, records=records):
        with pytest.raises(ConfigError, match=r"has 3 documents, fewer than its 4 row streams.*"
                                              r"--config.data.streams=1"):
            pipeline.make_train_iterator(make_config("lm1b"), tokenizer, process_index=0,
                                         process_count=1)
