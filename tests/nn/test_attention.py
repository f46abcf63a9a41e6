"""fmjax's CPU attention paths against the plain attention core: the causal block-skipping
core, the row mask it relies on, and the fused q/k/v split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import attention, softmax_attention as attention_core


def _packed_inputs(b=2, t=128, h=3, k=16, split=50, seed=0):
    rng = np.random.default_rng(seed)
    q, k_, v, dout = (jnp.asarray(rng.standard_normal((b, t, h, k)), jnp.float32)
                      for _ in range(4))
    segments = np.ones((b, t), np.int32)
    segments[:, split:] = 2
    segments[1, t - 7:] = 0  # padding at the end of the second row
    positions = np.concatenate([np.arange(split), np.arange(t - split)])
    positions = np.broadcast_to(positions, (b, t)).astype(np.int32)
    mask = attention.attention_mask(jnp.asarray(segments), jnp.asarray(segments),
                                    jnp.asarray(positions), jnp.asarray(positions),
                                    same_row=True)
    # padding queries see no key; no real token reads them, so their gradient is zero
    real_BT11 = jnp.asarray(segments > 0)[:, :, None, None]
    return q, k_, v, dout * real_BT11, mask, real_BT11


def _value_and_grads(fn, q, k, v, dout):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out, *vjp(dout))


@pytest.mark.parametrize("blocks", [2, 4, 8])
def test_causal_block_attention_equals_full_attention_with_gradients(blocks):
    q, k, v, dout, mask, real = _packed_inputs()
    full = _value_and_grads(lambda q, k, v: attention_core.attention_core(q, k, v, mask), q, k, v,
                            dout)
    skipped = _value_and_grads(
        lambda q, k, v: attention_core.causal_attention(q, k, v, mask, None, blocks), q, k, v, dout)
    np.testing.assert_allclose(full[0] * real, skipped[0] * real, rtol=1e-5, atol=2e-6)
    for name, a, b in zip(("dq", "dk", "dv"), full[1:], skipped[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6, err_msg=name)


def test_causal_block_attention_keeps_the_scale():
    q, k, v, dout, mask, real = _packed_inputs(t=64, split=30)
    full = _value_and_grads(
        lambda q, k, v: attention_core.attention_core(q, k, v, mask, None, 0.5), q, k, v, dout)
    skipped = _value_and_grads(
        lambda q, k, v: attention_core.causal_attention(q, k, v, mask, 0.5, 2), q, k, v, dout)
    for a, b in zip((full[0] * real, *full[1:]), (skipped[0] * real, *skipped[1:])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


def test_same_row_mask_hides_later_keys_whatever_the_positions():
    """Positions that decrease inside a segment would let a query see later keys by position;
    with same_row the mask is lower-triangular, which the block skipping relies on."""
    segments = jnp.ones((1, 4), jnp.int32)
    positions = jnp.asarray([[3, 2, 1, 0]], jnp.int32)
    by_position = attention.attention_mask(segments, segments, positions, positions)[0, 0]
    by_row = attention.attention_mask(segments, segments, positions, positions,
                                      same_row=True)[0, 0]
    assert bool(by_position[0, 3])  # position 0 <= 3: visible by position alone
    np.testing.assert_array_equal(by_row, np.tril(np.ones((4, 4), bool)) & np.asarray(by_position))
    # rows packed in order (the data pipeline's) are unchanged by same_row
    ordered = jnp.asarray([[0, 1, 0, 1]], jnp.int32)
    segs = jnp.asarray([[1, 1, 2, 2]], jnp.int32)
    np.testing.assert_array_equal(
        attention.attention_mask(segs, segs, ordered, ordered),
        attention.attention_mask(segs, segs, ordered, ordered, same_row=True))


def test_causal_blocks_rule():
    assert attention_core.causal_blocks(256) == 4
    assert attention_core.causal_blocks(128) == 2
    assert attention_core.causal_blocks(2048) == 8
    assert attention_core.causal_blocks(64) == 1
    assert attention_core.causal_blocks(100) == 1  # no even split: the plain core


def test_unstack_qkv_gradient_is_the_stacked_gradients():
    rng = np.random.default_rng(1)
    qkv = jnp.asarray(rng.standard_normal((2, 5, 3, 3, 4)), jnp.float32)
    weights = [jnp.asarray(rng.standard_normal((2, 5, 3, 4)), jnp.float32) for _ in range(3)]

    def loss(unstack, x):
        return sum(jnp.sum(w * part) for w, part in zip(weights, unstack(x)))

    def sliced(x):
        return x[:, :, :, 0], x[:, :, :, 1], x[:, :, :, 2]
    for a, b in zip(attention.unstack_qkv(qkv), sliced(qkv)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.grad(loss, argnums=1)(attention.unstack_qkv, qkv),
                                  jax.grad(loss, argnums=1)(sliced, qkv))
