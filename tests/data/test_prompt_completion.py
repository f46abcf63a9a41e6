"""Prompt/completion records -> rows with a loss mask, and the causal_lm objective's use of it."""
import json
import random

import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import objectives
from fmjax.config import ConfigError, base_config
from fmjax.data import hash_split, prompt_completion as pc
from fmjax.data import sp_tokenizer as tokenizer_lib
from tests.helpers import assert_batches_equal, packed_batch, tiny_config, take

SEQ_LEN = 32
WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]


def make_records(n=60):
    """Unique records; prompt and completion lengths vary (some prompts are long)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        prompt = f"Q{i}: after " + " ".join(rng.choice(WORDS, 1 + 6 * (i % 5 == 0) + i % 3))
        records.append({"prompt": prompt + "?\nA:",
                        "completion": " " + " ".join(rng.choice(WORDS, 1 + i % 4)) + "."})
    return records


def write_jsonl(path, records, **extra):
    path.write_text("".join(json.dumps({**r, **extra}) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def records():
    return make_records()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, records):
    texts = [r["prompt"] + r["completion"] for r in records]
    path = tmp_path_factory.mktemp("tok") / "pc.model"
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_sentencepiece(
        texts, vocab_size=300, output_path=str(path), num_threads=1))


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, records):
    return write_jsonl(tmp_path_factory.mktemp("pc") / "data.jsonl", records, id=1)


def make_config(paths, **data):
    config = base_config()
    config.data.paths = paths
    config.data.validation_percent = 25
    config.model.seq_len = SEQ_LEN
    config.train.global_batch_size = 8
    for key, value in data.items():
        config.data[key] = value
    return config


def segment_weights(segment_ids_BT):
    """The causal_lm weights from segment ids alone: t and t+1 real and in one segment."""
    next_BT = np.concatenate([segment_ids_BT[:, 1:], np.zeros_like(segment_ids_BT[:, :1])], 1)
    return ((segment_ids_BT > 0) & (next_BT == segment_ids_BT)).astype(np.float32)


# ----------------------------------------------------------------------------- rows


def test_loss_mask_is_exactly_the_completion_and_eos(tokenizer, records):
    for record in records:
        row = pc.encode_prompt_completion(tokenizer, record["prompt"], record["completion"],
                                          seq_len=128)
        p, c = tokenizer.encode(record["prompt"]), tokenizer.encode(record["completion"])
        n = 1 + len(p) + len(c) + 1
        assert n <= 128
        expected = [tokenizer.bos_id, *p, *c, tokenizer.eos_id]
        assert row["tokens"].tolist() == expected + [tokenizer.pad_id] * (128 - n)
        assert row["segment_ids"].tolist() == [1] * n + [0] * (128 - n)
        assert row["positions"].tolist() == list(range(n)) + [0] * (128 - n)
        assert row["loss_mask"].tolist() == [0] * (1 + len(p)) + [1] * (len(c) + 1) + [0] * (
            128 - n)
        masked = row["tokens"][row["loss_mask"] == 1]
        assert masked[-1] == tokenizer.eos_id
        assert tokenizer.decode(masked) == record["completion"]
        assert all(v.dtype == np.int32 and v.shape == (128,) for v in row.values())


def test_truncation_cuts_the_prompt_start_then_the_completion_end(tokenizer):
    prompt, completion = " ".join(WORDS * 3), " alpha beta gamma"
    p, c = tokenizer.encode(prompt), tokenizer.encode(completion)
    eos = tokenizer.eos_id
    seq_len = len(c) + 6  # room for bos, eos and the last 4 prompt tokens
    row = pc.encode_prompt_completion(tokenizer, prompt, completion, seq_len)
    assert row["tokens"].tolist() == [tokenizer.bos_id, *p[-4:], *c, eos]
    assert row["loss_mask"].tolist() == [0] * 5 + [1] * (len(c) + 1)
    assert tokenizer.decode(row["tokens"][row["loss_mask"] == 1]) == completion

    row = pc.encode_prompt_completion(tokenizer, prompt, completion, len(c) + 2)  # just fits
    assert row["tokens"].tolist() == [tokenizer.bos_id, *c, eos]

    row = pc.encode_prompt_completion(tokenizer, prompt, completion, len(c))  # does not fit
    assert row["tokens"].tolist() == [tokenizer.bos_id, *c[:len(c) - 1]]  # no prompt, no eos
    assert row["loss_mask"].tolist() == [0] + [1] * (len(c) - 1)


# ----------------------------------------------------------------------------- objective


def test_causal_lm_weights_are_the_loss_mask_shifted_by_one(jsonl, tokenizer):
    config = make_config(jsonl, shuffle=False)
    batch = next(pc.make_prompt_completion_train_iterator(config, tokenizer, process_index=0,
                                                          process_count=1))
    assert set(batch) == {"tokens", "segment_ids", "positions", "loss_mask"}
    example = objectives.get(tiny_config()).transform(
        {k: jnp.asarray(v) for k, v in batch.items()})
    weights_BT, targets_BT = np.asarray(example["weights"]), np.asarray(example["targets"])
    mask_BT = batch["loss_mask"]
    np.testing.assert_array_equal(weights_BT[:, :-1], mask_BT[:, 1:])
    np.testing.assert_array_equal(weights_BT[:, -1], 0)
    assert weights_BT.sum() == mask_BT.sum()  # every completion token and eos scored once
    on = weights_BT > 0
    np.testing.assert_array_equal(targets_BT[:, :-1][on[:, :-1]], batch["tokens"][:, 1:][
        on[:, :-1]])
    np.testing.assert_array_equal(targets_BT[~on], 0)


def test_batch_without_loss_mask_keeps_segment_weights():
    objective = objectives.get(tiny_config())
    batch = packed_batch(batch=4, seq=16, split=9)
    batch["segment_ids"][1, 12:] = 0  # some padding
    example = objective.transform({k: jnp.asarray(v) for k, v in batch.items()})
    expected = segment_weights(batch["segment_ids"])
    np.testing.assert_array_equal(np.asarray(example["weights"]), expected)
    assert example["weights"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(example["targets"]),
                                  np.where(expected > 0, np.roll(batch["tokens"], -1, 1), 0))
    ones = dict(batch, loss_mask=np.ones_like(batch["tokens"]))  # all-ones mask: no change
    np.testing.assert_array_equal(np.asarray(objective.transform(
        {k: jnp.asarray(v) for k, v in ones.items()})["weights"]), expected)


# ----------------------------------------------------------------------------- records


def test_missing_or_non_string_fields_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n\n{"prompt": "p", "answer": "c"}\n')
    config = make_config(str(path))
    with pytest.raises(ConfigError, match=r"task\.completion_field = 'completion': .*bad\.jsonl:3 "
                                          r"has no key 'completion' \(it has: answer, prompt\)"
                                          r".*--config\.task\.completion_field"):
        pc.open_prompt_completion(config, "train")
    config.task.completion_field = "answer"
    path.write_text('{"prompt": "p", "answer": "c"}\n{"prompt": 7, "answer": "c"}\n')
    with pytest.raises(ConfigError, match=r"task\.prompt_field = 'prompt': .*bad\.jsonl:2 holds "
                                          r"a int under 'prompt', not a string"):
        pc.open_prompt_completion(config, "train")
    path.write_text('{"prompt": "p", "answer": "c"}\n[1, 2]\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:2 has no key 'prompt' \(it has: list\)"):
        pc.open_prompt_completion(config, "train")
    path.write_text('{"prompt": "p", "answer": "c"\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1 is not valid JSON"):
        pc.open_prompt_completion(config, "train")
    (tmp_path / "notes.txt").write_text("plain text\n")
    with pytest.raises(ConfigError, match=r"data\.paths = .*notes\.txt is not a \.jsonl file"):
        pc.open_prompt_completion(make_config(f"{tmp_path}/*"), "train")


def test_split_is_a_pure_function_of_the_record_text(tmp_path, records):
    def splits(config):
        return {split: [(r["prompt"], r["completion"])
                        for r in pc.open_prompt_completion(config, split)]
                for split in ("train", "validation")}

    config = make_config(write_jsonl(tmp_path / "all.jsonl", records))
    first = splits(config)
    assert len(first["train"]) + len(first["validation"]) == len(records)
    assert 5 <= len(first["validation"]) <= 25  # validation_percent = 25 of 60
    for split, pairs in first.items():
        assert all(hash_split.split_for_key(json.dumps([p, c]), 25) == split for p, c in pairs)
    # Shuffled, split over two files, with other keys and new records: membership is unchanged.
    shuffled = random.Random(0).sample(records, len(records))
    extra = make_records(90)[60:]
    write_jsonl(tmp_path / "a.jsonl", shuffled[:30] + extra, source="x")
    write_jsonl(tmp_path / "b.jsonl", shuffled[30:])
    moved = splits(make_config(f"{tmp_path}/a.jsonl,{tmp_path}/b.jsonl"))
    for split in ("train", "validation"):
        old = set(first[split])
        assert old <= set(moved[split])
        assert not old & set(moved["validation" if split == "train" else "train"])
    config.data.max_examples = 4
    assert splits(config) == {s: pairs[:4] for s, pairs in first.items()}


# ----------------------------------------------------------------------------- pipelines


def test_train_iterator_round_trips_its_state(jsonl, tokenizer):
    config = make_config(jsonl)
    iterator = pc.make_prompt_completion_train_iterator(config, tokenizer, process_index=0,
                                                        process_count=1)
    batches = take(iterator, 3)
    for batch in batches:
        assert all(v.shape == (8, SEQ_LEN) and v.dtype == np.int32 for v in batch.values())
    state = json.loads(json.dumps(iterator.get_state()))  # orbax stores it as JSON
    expected = take(iterator, 10)  # 13 batches of 8 > 45 train records: crosses an epoch
    fresh = pc.make_prompt_completion_train_iterator(config, tokenizer, process_index=0,
                                                     process_count=1)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 10), expected)
    again = pc.make_prompt_completion_train_iterator(config, tokenizer, process_index=0,
                                                     process_count=1)
    assert_batches_equal(take(again, 3), batches)  # order = f(seed, epoch, index)


def test_train_epochs_cover_the_split_in_new_orders_and_processes_split_it(jsonl, tokenizer):
    config = make_config(jsonl)
    train = pc.open_prompt_completion(config, "train")
    n = len(train)
    rows = [tuple(r) for b in take(pc.make_prompt_completion_train_iterator(
        config, tokenizer, process_index=0, process_count=1), 3 * n // 8) for r in b["tokens"]]
    epochs = [rows[:n], rows[n:2 * n]]
    assert len(set(epochs[0])) == n and set(epochs[0]) == set(epochs[1])
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    shares = []
    for index in (0, 1):
        iterator = pc.make_prompt_completion_train_iterator(config, tokenizer,
                                                            process_index=index, process_count=2)
        batches = take(iterator, n // 4)
        assert batches[0]["tokens"].shape == (4, SEQ_LEN)
        shares.append({tuple(r) for b in batches for r in b["tokens"]})
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(epochs[0])


def test_eval_batches_hold_every_validation_record_once(jsonl, tokenizer):
    config = make_config(jsonl)
    validation = pc.open_prompt_completion(config, "validation")
    batches = pc.make_prompt_completion_eval_batches(config, tokenizer, process_index=0,
                                                     process_count=1)
    assert len(batches) == -(-len(validation) // 8)
    assert_batches_equal(batches, pc.make_prompt_completion_eval_batches(
        config, tokenizer, process_index=0, process_count=1))
    rows = [(t, s, m) for b in batches
            for t, s, m in zip(b["tokens"], b["segment_ids"], b["loss_mask"])]
    real = [(t, m) for t, s, m in rows if s[0] == 1]
    padding = [(t, s, m) for t, s, m in rows if s[0] == 0]
    assert [tokenizer.decode(t[m == 1]) for t, m in real] == [
        r["completion"] for r in validation]
    assert len(padding) == 8 * len(batches) - len(validation)
    assert all(not s.any() and not m.any() for _, s, m in padding)
    per_process = [pc.make_prompt_completion_eval_batches(config, tokenizer, process_index=i,
                                                          process_count=2) for i in (0, 1)]
    assert len(per_process[0]) == len(per_process[1])  # lockstep
    assert sum(int(b["segment_ids"][:, 0].sum()) for p in per_process for b in p) == len(
        validation)
