"""BERT's masked-LM pseudo-log-likelihood (Salazar et al., 2020) against Hugging Face PyTorch
on a tiny random BERT imported into fmjax: each continuation token masked in turn, copies packed
several to a row, every request's sum equal to HF's (one copy at a time) to 1e-4."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fmjax.evals import loglikelihood, masked_lm  # noqa: E402
from tests.hf.test_convert_encoders import BERT_VOCAB, hf_dirs, imported  # noqa: E402,F401

MASK = BERT_VOCAB - 1


def hf_pll(model, request, row_length):
    whole = (list(request.context_ids) + list(request.continuation_ids))[-row_length:]
    n = min(len(request.continuation_ids), len(whole))
    total = 0.0
    for k in range(len(whole) - n, len(whole)):
        masked = list(whole)
        masked[k] = MASK
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([masked])).logits[0, k].double()
        total += float(torch.log_softmax(logits, dim=-1)[whole[k]])
    return total


def test_pseudo_loglikelihoods_equal_transformers(hf_dirs, imported):  # noqa: F811
    _, _, model, params = imported("bert")
    hf = hf_dirs["bert"][1]
    rng = np.random.default_rng(5)
    requests = [loglikelihood.Request(
        tuple(int(t) for t in rng.integers(1, MASK, rng.integers(1, 10))),
        tuple(int(t) for t in rng.integers(1, MASK, rng.integers(1, 4)))) for _ in range(8)]
    requests.append(loglikelihood.Request(tuple(range(1, 40)), (5, 6)))  # truncated
    scorer = loglikelihood.make_token_scorer(
        lambda p, r: model.apply({"params": p}, r["tokens"], r["segment_ids"], r["positions"]),
        model.cfg.vocab_size)
    got = masked_lm.pseudo_loglikelihoods(scorer, params, requests, row_length=24,
                                          batch_rows=2, mask_id=MASK)
    rows, placed, truncated = masked_lm.pack(requests, 24, MASK)
    assert truncated == [False] * 8 + [True]
    assert rows["weights"].sum() == sum(len(r.continuation_ids) for r in requests)
    assert len(rows["tokens"]) < int(rows["weights"].sum())  # copies share rows
    for request, result in zip(requests, got):
        np.testing.assert_allclose(result.logprob, hf_pll(hf, request, 24), rtol=1e-4,
                                   atol=1e-4)
