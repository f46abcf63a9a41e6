"""The numerics of one weight: int8 per output channel and int4 per group of the contraction
(symmetric absmax, round to nearest), their error bounds, the group layout over several
contracted axes, and the errors for an unknown scheme or a group size that does not tile."""
import numpy as np
import pytest

import jax.numpy as jnp

from fmjax.config import ConfigError
from fmjax.quantization import integer_params, schemes, weights


def layout(shape, contract_axes):
    return integer_params.Layout("w", tuple(shape), tuple(contract_axes), (None,) * len(shape))


def quantize(w, contract_axes, scheme, group_size=0):
    q, scale = integer_params.quantize_leaf(jnp.asarray(w), layout(w.shape, contract_axes),
                                       schemes.get(scheme), group_size)
    return np.asarray(q), np.asarray(scale), np.asarray(weights.dequantize(q, scale))


def test_int8_one_scale_per_output_channel_and_half_a_step_of_error():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 64, 4, 8)).astype(np.float32)  # [layers, D, H, K], contracts D
    w[0, :, 1, 3] *= 50  # one loud channel must not coarsen the others
    q, scale, back = quantize(w, (1,), "int8")
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scale.shape == (2, 1, 4, 8) and scale.dtype == np.float32
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1, keepdims=True) / 127.5, rtol=1e-6)
    assert q.min() >= -128 and q.max() <= 127
    assert np.all(np.abs(w - back) <= scale / 2 * (1 + 1e-5))
    others = np.delete(scale.reshape(-1), 1 * 8 + 3)  # every channel but the loud one
    assert others.max() < scale[0, 0, 1, 3] / 10
    # each channel uses its range: the largest |q| of every channel is 127 or 128
    assert np.all(np.abs(q.astype(np.int32)).max(axis=1) >= 127)


def test_int4_one_scale_per_group_of_the_contraction():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(64, 32)).astype(np.float32)  # [D, F], contracts D, groups of 16
    q, scale, back = quantize(w, (0,), "int4", 16)
    assert q.dtype == jnp.int4 and scale.shape == (4, 32)
    groups = w.reshape(4, 16, 32)
    np.testing.assert_allclose(scale, np.abs(groups).max(axis=1) / 7.5, rtol=1e-6)
    assert q.astype(np.int32).min() >= -8 and q.astype(np.int32).max() <= 7
    err = np.abs(w - back).reshape(4, 16, 32)
    assert np.all(err <= scale[:, None, :] / 2 * (1 + 1e-5))
    # a group's scale depends on that group only
    louder = w.copy()
    louder[16:32] *= 100
    q2, scale2, _ = quantize(louder, (0,), "int4", 16)
    np.testing.assert_array_equal(q2[:16], q[:16])
    np.testing.assert_array_equal(scale2[[0, 2, 3]], scale[[0, 2, 3]])


def test_int4_groups_run_over_several_contracted_axes_in_row_major_order():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 8, 16)).astype(np.float32)  # attention out: [H, K, D], contracts H, K
    for group, scale_shape in ((16, (2, 1, 16)), (4, (4, 2, 16)), (32, (1, 1, 16))):
        q, scale, back = quantize(w, (0, 1), "int4", group)
        assert scale.shape == scale_shape
        flat = w.reshape(32 // group, group, 16)  # the matmul's view: [H*K, D] in groups
        np.testing.assert_allclose(scale.reshape(-1, 16), np.abs(flat).max(axis=1) / 7.5,
                                   rtol=1e-6)
        assert np.all(np.abs(w - back).reshape(32 // group, group, 16)
                      <= scale.reshape(-1, 1, 16) / 2 * (1 + 1e-5))


def test_group_tiles():
    assert schemes.group_tiles((4, 8, 16), (0, 1), 16) == {0: 2}
    assert schemes.group_tiles((4, 8, 16), (0, 1), 4) == {1: 4, 0: 1}
    assert schemes.group_tiles((4, 8, 16), (0, 1), 32) == {}
    assert schemes.group_tiles((4, 8, 16), (0, 1), 64) is None  # larger than the contraction
    assert schemes.group_tiles((4, 6, 16), (0, 1), 4) is None  # neither divides nor covers 6
    assert schemes.working_group_sizes([((4, 8, 16), (0, 1)), ((96, 16), (0,))]) == [
        1, 2, 4, 8, 16, 32]


def test_unknown_scheme_says_what_exists_and_did_you_mean():
    with pytest.raises(ConfigError, match=r"--scheme='in8': no such quantization scheme; use "
                                          r"one of int4, int8\. Did you mean 'int8'\?"):
        schemes.get("in8")


def test_group_size_that_does_not_tile_names_the_weight_and_the_sizes_that_do():
    named = {"layers/mlp/down/kernel": ((2, 96, 32), (1,)),
             "layers/attn/out/kernel": ((2, 4, 8, 32), (1, 2))}
    with pytest.raises(schemes.GroupSizeError) as e:
        schemes.check_group_size(64, named)
    assert str(e.value) == (
        "--group_size=64: weight layers/mlp/down/kernel (2, 96, 32) contracts 96 inputs, which "
        "groups of 64 do not tile; use --group_size in {8, 16, 32} (they tile every weight of "
        "this model), or --scheme=int8 (per channel, no groups)")
    schemes.check_group_size(32, named)  # tiles both
    with pytest.raises(schemes.GroupSizeError, match="--group_size=0: must be >= 1"):
        schemes.check_group_size(0, named)
