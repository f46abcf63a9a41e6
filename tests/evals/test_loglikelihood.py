"""Log-likelihood scoring against Hugging Face PyTorch on tiny random GPT-2 and Llama models
imported into fmjax: every request's sum of continuation log-probabilities equals HF's to 1e-4,
packed several to a row or one per row, and a request longer than the model's rows loses
tokens from the left of its context, as lm-evaluation-harness truncates."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fmjax.evals import loglikelihood  # noqa: E402
from tests.hf.test_convert_decoders import fmjax_model, hf_dirs, import_case  # noqa: E402,F401

VOCAB = 96


def hf_loglikelihood(model, request: loglikelihood.Request, max_length: int):
    """Sum of log p(continuation) and greedy-ness by HF, one request at a time (the harness's
    definition, with its left truncation to max_length + 1 tokens)."""
    whole = (list(request.context_ids) + list(request.continuation_ids))[-(max_length + 1):]
    n = min(len(request.continuation_ids), len(whole) - 1)
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]], dtype=torch.long)).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)[-n:]
    targets = torch.tensor(whole[-n:])
    picked = logp[torch.arange(n), targets]
    return float(picked.sum()), bool((logits[-n:].argmax(-1) == targets).all())


def random_requests(seed, count, max_len):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        context = tuple(int(t) for t in rng.integers(0, VOCAB, rng.integers(1, max_len)))
        continuation = tuple(int(t) for t in rng.integers(0, VOCAB, rng.integers(1, 6)))
        out.append(loglikelihood.Request(context, continuation))
    return out


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_loglikelihoods_equal_transformers(hf_dirs, tmp_path, case):  # noqa: F811
    _, ckpt = import_case(hf_dirs, case, tmp_path)
    model, cfg, params = fmjax_model(ckpt)
    hf = hf_dirs[case][1]
    row_length = 32  # the tiny GPT-2's position table
    requests = random_requests(0, 12, 24) + [  # longer than a row: truncated from the left
        loglikelihood.Request(tuple(range(1, 50)), (7, 8, 9)),
        loglikelihood.Request((5,), tuple(range(10, 50)))]  # the continuation alone too
    scorer = loglikelihood.make_token_scorer(
        lambda p, rows: model.apply({"params": p}, rows["tokens"], rows["segment_ids"],
                                    rows["positions"]), cfg.vocab_size)
    packed = loglikelihood.loglikelihoods(scorer, params, requests, row_length=row_length,
                                          batch_rows=2)
    rows, _, _ = loglikelihood.pack(requests, row_length)
    assert len(rows["tokens"]) < len(requests)  # several requests share rows
    assert [r.truncated for r in packed] == [False] * 12 + [True, True]
    for request, got in zip(requests, packed):
        want, greedy = hf_loglikelihood(hf, request, row_length)
        np.testing.assert_allclose(got.logprob, want, rtol=1e-4, atol=1e-4)
        assert got.is_greedy == greedy
    # one request per row (no packing) gives the same numbers
    alone = [loglikelihood.loglikelihoods(scorer, params, [r], row_length=row_length,
                                          batch_rows=1)[0] for r in requests[:4]]
    np.testing.assert_allclose([r.logprob for r in alone], [r.logprob for r in packed[:4]],
                               rtol=1e-5, atol=1e-5)


def test_packing_keeps_requests_apart():
    requests = [loglikelihood.Request((1, 2, 3), (4,)), loglikelihood.Request((5,), (6, 7)),
                loglikelihood.Request((8, 9, 10, 11, 12), (13,))]
    rows, placed, truncated = loglikelihood.pack(requests, 8)
    assert not any(truncated)
    assert rows["tokens"].shape[1] == 8
    for request, p in zip(requests, placed):
        span = slice(p.start, p.start + p.length)
        whole = list(request.context_ids) + list(request.continuation_ids)
        assert list(rows["tokens"][p.row, span]) == whole[:-1]
        assert list(rows["targets"][p.row, span]) == whole[1:]
        assert list(rows["positions"][p.row, span]) == list(range(p.length))
        assert len(set(rows["segment_ids"][p.row, span])) == 1
        assert rows["weights"][p.row, span].sum() == len(request.continuation_ids)
    assert rows["weights"].sum() == 4
    # a continuation longer than a row keeps its last row_length tokens, all scored
    rows, placed, truncated = loglikelihood.pack([loglikelihood.Request((1,), tuple(range(2, 12)))],
                                                 8)
    assert truncated == [True] and placed[0].continuation == 8
    assert list(rows["targets"][0]) == list(range(4, 12)) and rows["weights"].sum() == 8


def test_prefix_lm_scores_the_context_as_its_bidirectional_prefix():
    """For a checkpoint trained with objective=prefix_lm the context is the prefix: packed
    scores equal one-request-at-a-time scores with prefix_mask on the context (and differ from
    causal scores, so the mask is used); the first prefix token is the request's first."""
    import jax
    import jax.numpy as jnp
    from fmjax import models
    from tests.helpers import tiny_config
    config = tiny_config(init_std=0.5)
    model, cfg = models.build(config)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 32), jnp.int32))["params"]
    requests = random_requests(1, 6, 20)
    rows, placed, _ = loglikelihood.pack(requests, 32)
    for request, p in zip(requests, placed):
        assert rows["prefix"][p.row, p.start:p.start + p.length].sum() == len(request.context_ids)

    def scorer(prefix_lm):
        def apply(p, r):
            extra = {"prefix_mask_BT": r["prefix"]} if prefix_lm else {}
            return model.apply({"params": p}, r["tokens"], r["segment_ids"], r["positions"],
                               **extra)
        return loglikelihood.make_token_scorer(apply, cfg.vocab_size)

    packed = loglikelihood.loglikelihoods(scorer(True), params, requests, row_length=32,
                                          batch_rows=2)
    causal = loglikelihood.loglikelihoods(scorer(False), params, requests, row_length=32,
                                          batch_rows=2)
    for request, got, plain in zip(requests, packed, causal):
        tokens = list(request.context_ids) + list(request.continuation_ids)
        c, n = len(request.context_ids), len(request.continuation_ids)
        prefix = jnp.asarray([[1] * c + [0] * (len(tokens) - 1 - c)], jnp.int32)
        logits = model.apply({"params": params}, jnp.asarray([tokens[:-1]], jnp.int32),
                             prefix_mask_BT=prefix)[0].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits[:, :cfg.vocab_size], axis=-1)
        want = sum(float(logp[c - 1 + i, tokens[c + i]]) for i in range(n))
        np.testing.assert_allclose(got.logprob, want, rtol=1e-5, atol=1e-5)
    assert any(abs(a.logprob - b.logprob) > 1e-3 for a, b in zip(packed, causal))
