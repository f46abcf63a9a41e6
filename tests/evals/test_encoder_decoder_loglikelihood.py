"""Log-likelihood scoring of encoder-decoder models against Hugging Face PyTorch on tiny random
T5 and T5.1.1 models imported into fmjax."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fmjax.evals import loglikelihood  # noqa: E402
from tests.hf.test_convert_encoders import T5_VOCAB, hf_dirs, imported  # noqa: E402,F401


@pytest.mark.parametrize("case", ["t5", "t5_1_1"])
def test_encoder_decoder_loglikelihoods_equal_transformers(hf_dirs, imported, case):  # noqa: F811
    """T5: the context goes to the encoder, the answer is the decoder's targets after the start
    id 0; packed several to a row in both stacks, every request's sum equals HF's to 1e-4."""
    _, _, model, params = imported(case)
    hf = hf_dirs[case][1]
    rng = np.random.default_rng(3)
    requests = [loglikelihood.Request(
        tuple(int(t) for t in rng.integers(1, T5_VOCAB, rng.integers(2, 12))),
        tuple(int(t) for t in rng.integers(1, T5_VOCAB, rng.integers(1, 5))))
        for _ in range(10)]
    scorer = loglikelihood.make_token_scorer(
        lambda p, r: model.apply({"params": p}, r["encoder_tokens"], r["tokens"],
                                 r["encoder_segment_ids"], r["segment_ids"],
                                 r["encoder_positions"], r["positions"]), model.cfg.vocab_size)
    got = loglikelihood.loglikelihoods(scorer, params, requests, row_length=24, batch_rows=2,
                                       encoder_decoder=True)
    rows, _, _ = loglikelihood.pack_encoder_decoder(requests, 24, 24)
    assert len(rows["tokens"]) < len(requests)
    for request, result in zip(requests, got):
        targets = list(request.continuation_ids)
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([list(request.context_ids)]),
                        decoder_input_ids=torch.tensor([[0] + targets[:-1]])).logits[0].double()
        logp = torch.log_softmax(logits, dim=-1)
        want = float(logp[torch.arange(len(targets)), torch.tensor(targets)].sum())
        np.testing.assert_allclose(result.logprob, want, rtol=1e-4, atol=1e-4)
