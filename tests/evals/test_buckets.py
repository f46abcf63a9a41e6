"""Length buckets and the mesh: requests sorted into rows of the model's length and its halves
score exactly as in one bucket of full-length rows, with one compiled shape per used bucket and
the same tokens per batch; sharded over 4 data x 2 fsdp devices, the results equal one
device's."""
import jax
import numpy as np
import pytest

from fmjax import mesh as mesh_lib, models
from fmjax.evals import loglikelihood
from tests.helpers import tiny_config


def test_bucket_lengths():
    assert loglikelihood.bucket_lengths(256) == [64, 128, 256]
    assert loglikelihood.bucket_lengths(1024) == [256, 512, 1024]
    assert loglikelihood.bucket_lengths(96) == [96]  # 48 is below MIN_BUCKET
    assert loglikelihood.bucket_lengths(32) == [32]


@pytest.fixture(scope="module")
def decoder():
    config = tiny_config(seq_len=256, n_layers=1, n_heads=4)
    model, cfg = models.build(config)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, cfg.seq_len), np.int32))
    return config, model, cfg, params["params"]


def _requests(seed=0):
    rng = np.random.default_rng(seed)
    lengths = [5, 20, 40, 60, 90, 120, 150, 200, 250, 300]  # every bucket, and one truncated
    return [loglikelihood.Request(tuple(int(t) for t in rng.integers(3, 128, n)),
                                  tuple(int(t) for t in rng.integers(3, 128, 3)))
            for n in lengths for _ in range(2)]


def _apply(model):
    return lambda p, rows: model.apply({"params": p}, rows["tokens"], rows["segment_ids"],
                                       rows["positions"])


class ShapeLog:
    """A scorer that records the shape of every batch it is given."""

    def __init__(self, scorer):
        self.scorer, self.shapes = scorer, []
        self.row_multiple = getattr(scorer, "row_multiple", 1)

    def __call__(self, params, rows):
        self.shapes.append(rows["tokens"].shape)
        return self.scorer(params, rows)


def test_buckets_score_as_one_full_length_bucket(decoder, monkeypatch):
    _, model, cfg, params = decoder
    requests = _requests()
    scorer = ShapeLog(loglikelihood.make_token_scorer(_apply(model), cfg.vocab_size))
    bucketed = loglikelihood.loglikelihoods(scorer, params, requests, row_length=256,
                                            batch_rows=2)
    assert set(scorer.shapes) == {(8, 64), (4, 128), (2, 256)}  # 512 tokens per batch each
    monkeypatch.setattr(loglikelihood, "BUCKETS", 1)
    single = ShapeLog(loglikelihood.make_token_scorer(_apply(model), cfg.vocab_size))
    whole = loglikelihood.loglikelihoods(single, params, requests, row_length=256, batch_rows=2)
    assert set(single.shapes) == {(2, 256)}
    np.testing.assert_allclose([r.logprob for r in bucketed], [r.logprob for r in whole],
                               rtol=1e-5, atol=1e-4)
    assert [r.truncated for r in bucketed] == [r.truncated for r in whole] == \
        [False] * 18 + [True] * 2


def test_rows_are_sharded_over_the_mesh_batch_axes(decoder):
    config, model, cfg, params = decoder
    config.mesh.data, config.mesh.fsdp = 4, 2
    mesh = mesh_lib.make_mesh(config)
    sharded = ShapeLog(loglikelihood.make_token_scorer(_apply(model), cfg.vocab_size, mesh))
    assert sharded.row_multiple == 8
    requests = _requests(1)
    on_mesh = loglikelihood.loglikelihoods(sharded, params, requests, row_length=256,
                                           batch_rows=2)
    assert all(rows % 8 == 0 for rows, _ in sharded.shapes)  # batches round up to the shards
    alone = loglikelihood.loglikelihoods(
        loglikelihood.make_token_scorer(_apply(model), cfg.vocab_size), params, requests,
        row_length=256, batch_rows=2)
    np.testing.assert_allclose([r.logprob for r in on_mesh], [r.logprob for r in alone],
                               rtol=1e-5, atol=1e-4)
    assert [r.is_greedy for r in on_mesh] == [r.is_greedy for r in alone]
