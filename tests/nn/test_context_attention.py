"""Context parallelism's pieces: the zigzag row order (fmjax/nn/context_parallel.py) and
all-gather attention over a split sequence (fmjax/nn/context_attention.py) against one-device
attention on the whole row, values and gradients, for causal, prefix-LM and bidirectional
masks over packed segments that straddle the shards."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh

from fmjax import mesh as mesh_lib
from fmjax.nn import context_attention, context_parallel as cp
from fmjax.nn.masks import attention_mask
from fmjax.nn.softmax_attention import attention_core

B, T, H, G, K = 4, 32, 4, 2, 8


def test_zigzag_order_gives_each_shard_an_early_and_a_late_chunk():
    np.testing.assert_array_equal(cp.zigzag_chunks(4), [0, 7, 1, 6, 2, 5, 3, 4])
    x_BT = jnp.arange(2 * 16).reshape(2, 16)
    z_BT = cp.to_zigzag(x_BT, 4)
    np.testing.assert_array_equal(z_BT[0], [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9])
    np.testing.assert_array_equal(z_BT[0], cp.natural_index(16, 4, cp.ZIGZAG))
    np.testing.assert_array_equal(cp.from_zigzag(z_BT, 4), x_BT)
    x_BTD = jnp.arange(2 * 16 * 3.0).reshape(2, 16, 3)
    np.testing.assert_array_equal(cp.from_zigzag(cp.to_zigzag(x_BTD, 2), 2), x_BTD)
    np.testing.assert_array_equal(cp.natural_index(8, 4, cp.CONTIGUOUS), np.arange(8))
    # causal work per shard: chunk r sees r + 1 chunks, chunk 2C-1-r sees 2C - r: 2C + 1 each
    work = [sum(c + 1 for c in cp.zigzag_chunks(4)[2 * r:2 * r + 2]) for r in range(4)]
    assert work == [9] * 4


def test_query_block_bounds_the_probabilities():
    assert context_attention.query_block(4096, 32768, 8) == 256  # 8 x 256 x 32768 x 4 = 256 MiB
    assert context_attention.query_block(32, 32, 8) == 32
    assert context_attention.query_block(7, 1 << 40, 1) == 1


def packed_rows():
    """Three documents and padding per row, at different offsets in each row."""
    segment_ids = np.zeros((B, T), np.int32)
    positions = np.zeros((B, T), np.int32)
    for b in range(B):
        cuts = [0, 5 + 3 * b, 19 + b, T - 2 * b]
        for s in range(3):
            segment_ids[b, cuts[s]:cuts[s + 1]] = s + 1
            positions[b, cuts[s]:cuts[s + 1]] = np.arange(cuts[s + 1] - cuts[s])
    prefix = ((positions < 3) & (segment_ids > 0)).astype(np.int32)
    return jnp.asarray(segment_ids), jnp.asarray(positions), jnp.asarray(prefix)


def one_device(q_BTHK, k_BTGK, v_BTGK, seg_BT, pos_BT, prefix_BT, causal):
    mask = attention_mask(seg_BT, seg_BT, pos_BT, pos_BT, causal=causal, kv_prefix_BS=prefix_BT,
                          same_row=causal)
    groups = H // G
    return attention_core(q_BTHK, jnp.repeat(k_BTGK, groups, 2), jnp.repeat(v_BTGK, groups, 2),
                          mask, None, None)


def context_mesh(context: int, tensor: int = 1):
    devices = np.asarray(jax.devices()[:context * tensor])
    shape = {a: 1 for a in mesh_lib.MESH_AXES}
    shape.update(context=context, tensor=tensor)
    return Mesh(devices.reshape(tuple(shape.values())), tuple(shape),
                axis_types=(AxisType.Auto,) * len(shape))


# (context, tensor, row layout): zigzag at every size, token order at one
SPLITS = [(2, 1, cp.ZIGZAG), (4, 2, cp.ZIGZAG), (8, 1, cp.ZIGZAG), (4, 2, cp.CONTIGUOUS)]


@pytest.mark.parametrize("context,tensor,layout", SPLITS)
@pytest.mark.parametrize("mask", ["causal", "prefix_lm", "bidirectional"])
def test_context_attention_equals_one_device(context, tensor, layout, mask, monkeypatch):
    if context == 4:  # several query blocks (the jax.checkpoint'ed loop)
        monkeypatch.setattr(context_attention, "PROBS_BLOCK_BYTES", B * H * 4 * T * 4)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, K)), jnp.float32) for n in (H, G, G))
    seg, pos, prefix = packed_rows()
    prefix = prefix if mask == "prefix_lm" else None
    causal = mask != "bidirectional"

    def split(q, k, v):
        order = (lambda a: cp.to_zigzag(a, context)) if layout == cp.ZIGZAG else (lambda a: a)
        out = context_attention.context_attention(
            *map(order, (q, k, v, seg, pos)), None if prefix is None else order(prefix),
            causal=causal, layout=layout)
        return cp.from_zigzag(out, context) if layout == cp.ZIGZAG else out

    def whole(q, k, v):
        return one_device(q, k, v, seg, pos, prefix, causal)

    def loss(f):  # a nonlinear function of the real tokens' outputs
        return lambda *a: jnp.sum(jnp.where((seg > 0)[:, :, None, None], jnp.sin(f(*a)), 0))

    with jax.set_mesh(context_mesh(context, tensor)), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
        assert cp.context_size() == context
        out, grads = jax.jit(lambda *a: (split(*a), jax.grad(loss(split), (0, 1, 2))(*a)))(q, k, v)
    want, want_grads = whole(q, k, v), jax.grad(loss(whole), (0, 1, 2))(q, k, v)
    real = (seg > 0)[:, :, None, None]
    np.testing.assert_allclose(jnp.where(real, out, 0), jnp.where(real, want, 0), atol=2e-6)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, atol=2e-6)


def test_logs_name_the_context_path_not_the_whole_row_kernel():
    from fmjax.nn import attention as attention_lib
    assert attention_lib.describe_implementation("auto", "cpu", 4).startswith(
        "context all-gather over 4 shards")
    assert attention_lib.describe_implementation("xla", "gpu") == "xla"
