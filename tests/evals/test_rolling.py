"""Rolling log-likelihood (lm-evaluation-harness's loglikelihood_rolling): the disjoint windows
on a hand-worked example, every token predicted exactly once; word_perplexity, byte_perplexity
and bits_per_byte on known numbers (corpus-weighted, the harness's word count); a JSONL text
task through suite.evaluate on a tiny random GPT-2 equal to HF PyTorch's summed log-probs, with
the harness's (overlapping) windows computed in torch."""
import json
import math
import types

import numpy as np
import pytest

from fmjax import evals
from fmjax.evals import loglikelihood, rolling


def test_windows_by_hand():
    # tokens 1..7, prefix 0, the model sees 3: the first window predicts 1 2 3 from the prefix;
    # then 4 5 6 from 3 (4 tokens in all); then 7 from 4 5 6
    assert rolling.windows(list(range(1, 8)), 0, 3) == [
        ([0], [1, 2, 3]), ([3], [4, 5, 6]), ([4, 5, 6], [7])]
    assert rolling.windows([5, 6], 9, 4) == [([9], [5, 6])]
    assert rolling.windows([], 9, 4) == []


@pytest.mark.parametrize("n,max_seq_len", [(1, 1), (7, 1), (10, 4), (12, 4), (33, 8), (64, 8)])
def test_every_token_is_predicted_once_after_the_tokens_before_it(n, max_seq_len):
    tokens = list(range(100, 100 + n))
    got = rolling.windows(tokens, 0, max_seq_len)
    predicted = [t for _, p in got for t in p]
    assert predicted == tokens  # each once, in order
    for k, (context, p) in enumerate(got):
        assert 1 <= len(p) <= max_seq_len and len(context) + len(p) <= max_seq_len + 1
        start = tokens.index(p[0])
        # the context is the prefix (first window) or the tokens right before the prediction
        assert context == ([0] if k == 0 else tokens[start - len(context):start])
        if k:  # later windows fill the model's length
            assert len(context) + len(p) == max_seq_len + 1


def test_windows_equal_lm_eval_where_installed():
    utils = pytest.importorskip("lm_eval.utils")
    for n, max_seq_len in [(1, 1), (9, 2), (40, 7), (64, 8), (65, 8)]:
        tokens = list(range(1, n + 1))
        theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=0, max_seq_len=max_seq_len, context_len=1)]
        assert rolling.windows(tokens, 0, max_seq_len) == theirs


def test_metrics_are_weighted_by_corpus_totals():
    passages = [evals.Passage("a b c"), evals.Passage("h\u00e9llo  world\n")]
    # words by re.split(r"\s+"): 3, and 3 (the trailing newline leaves an empty last word);
    # bytes: 5, and 14 (the e-acute is two bytes in UTF-8)
    assert [rolling.word_count(p.text) for p in passages] == [3, 3]
    assert [rolling.byte_count(p.text) for p in passages] == [5, 14]
    results = [loglikelihood.Result(-4.0, False, False), loglikelihood.Result(-6.0, False, False),
               loglikelihood.Result(-20.0, False, False)]
    s = rolling.score(passages, results, owner=[0, 0, 1])  # passage 0 has two windows
    assert s.loglikelihood == -30.0 and (s.words, s.bytes, s.n) == (6, 19, 2)
    assert s.word_perplexity == pytest.approx(math.exp(5.0))
    assert s.byte_perplexity == pytest.approx(math.exp(30 / 19))
    assert s.bits_per_byte == pytest.approx(30 / 19 / math.log(2))
    # not the mean of per-passage values
    assert s.bits_per_byte != pytest.approx((10 / 5 + 20 / 14) / 2 / math.log(2))
    assert list(s.metrics()) == ["word_perplexity", "byte_perplexity", "bits_per_byte"]


class CharTokenizer:
    """One id per character of CHARS (newline first); id 95 is end-of-document (the tiny
    GPT-2's bos = eos), no bos."""
    CHARS = "\n" + "".join(chr(c) for c in range(32, 126))
    bos_id, eos_id, vocab_size, prefix_ids = -1, 95, 96, ()

    def encode(self, text):
        return [self.CHARS.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.CHARS[i] for i in ids if i < len(self.CHARS))


def engine_for(ckpt):
    """A stand-in for a training engine: what fmjax/evals/suite.py reads from one."""
    from fmjax import config as config_lib, models
    from fmjax.training import checkpoint
    params, config_dict, _ = checkpoint.read_params_to_host(ckpt)
    config = config_lib.from_json_dict(config_dict)
    model, cfg = models.build(config)
    return types.SimpleNamespace(model=model, model_config=cfg, config=config, mesh=None), params


def harness_rolling_loglikelihood(hf, tokens, prefix, max_len):
    """The harness's definition in torch: its overlapping windows (input = max_len tokens,
    the last len(predicted) logits scored), summed."""
    import torch
    total, done = 0.0, min(max_len, len(tokens))
    pieces = [([prefix] + tokens[:done - 1], done)]
    while done < len(tokens):
        predict = min(len(tokens) - done, max_len)
        end = done + predict
        pieces.append((tokens[end - max_len - 1:end - 1], predict))
        done = end
    for i, (inputs, predict) in enumerate(pieces):
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([inputs])).logits[0].double(), -1)
        start = sum(p for _, p in pieces[:i])
        targets = tokens[start:start + predict]
        total += float(logp[-predict:][torch.arange(predict), torch.tensor(targets)].sum())
    return total


def test_jsonl_text_task_equals_transformers(tmp_path):
    pytest.importorskip("torch")
    from tests.hf.test_convert_decoders import QUIET, hf_model
    from fmjax.hf import conversion
    from fmjax.evals import suite
    hf = hf_model("gpt2")
    hf.save_pretrained(str(tmp_path / "hf"))
    conversion.import_hf("gpt2", str(tmp_path / "hf"), str(tmp_path / "ckpt"), **QUIET)
    engine, params = engine_for(str(tmp_path / "ckpt"))
    assert engine.model_config.seq_len == 32
    texts = ["Short text.", "A longer text: " + "the quick brown fox jumps over the lazy dog. " * 2,
             "x"]  # 11, 105 (four windows of up to 32) and 1 tokens
    path = tmp_path / "texts.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    task = evals.get(f"jsonl:{path}")
    assert task.output_type == "loglikelihood_rolling"
    tokenizer = CharTokenizer()
    scores = suite.evaluate(engine, params, tokenizer, [f"jsonl:{path}"], batch_rows=2,
                            progress=False)[f"jsonl:{path}"]
    want = [harness_rolling_loglikelihood(hf, tokenizer.encode(t), 95, 32) for t in texts]
    np.testing.assert_allclose(scores.loglikelihood, sum(want), rtol=1e-4, atol=1e-4)
    n_bytes = sum(len(t.encode()) for t in texts)
    np.testing.assert_allclose(scores.bits_per_byte, -sum(want) / n_bytes / math.log(2),
                               rtol=1e-4)
    assert scores.n == 3 and scores.truncated == 0
    name = f"jsonl:{path}"
    results = suite.results_json({name: scores}, num_fewshot=2, model="tiny", limit=0)
    assert results["results"][name]["bits_per_byte,none"] == scores.bits_per_byte
    assert results["results"][name]["word_perplexity_stderr,none"] == "N/A"
    assert results["configs"][name]["output_type"] == "loglikelihood_rolling"
    assert results["n-shot"][name] == 0  # rolling tasks take no few-shot examples
    assert "bits_per_byte" in suite.table({name: scores}, 2)
