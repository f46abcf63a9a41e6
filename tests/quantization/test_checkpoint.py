"""The quantized checkpoint: what it stores (integer weights + float32 scales, the config's
mark), its size, its shardings when loaded onto a model-parallel mesh, and load_run on it: a
model whose params hold the integers and scales, the very values quantizing the float
checkpoint in memory gives, and no float copy of a quantized weight."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from fmjax import config as config_lib, mesh as mesh_lib
from fmjax.generation import loading
from fmjax.quantization import checkpoint_io, integer_params, schemes, weights
from fmjax.quantization.ptq import directory_bytes
from fmjax.training import checkpoint


def flat(tree):
    return {integer_params.leaf_key(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def stored(path):
    """{leaf: (shape, dtype)} as orbax recorded them."""
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(os.path.join(path, "params")).item_metadata["params"]
    return {k: (tuple(m.shape), jnp.dtype(m.dtype)) for k, m in flat(meta).items()}


@pytest.mark.parametrize("scheme,bits", [("int8", 8), ("int4", 4)])
def test_stores_integer_weights_and_float32_scales(float_export, quantized, scheme, bits):
    result = quantized[scheme]
    before, after = stored(float_export), stored(result.path)
    config_dict, _ = checkpoint.read_source(result.path)
    assert config_dict["quantization"] == {
        "scheme": scheme, "group_size": 32 if scheme == "int4" else 0, "weights": 8,
        "source": float_export}
    quantized_keys = {k for k, (_, dtype) in after.items() if jnp.issubdtype(dtype, jnp.integer)}
    assert quantized_keys == {"embed/embedding", "pos_embed/embedding"} | {
        f"layers/{m}/kernel" for m in ("attn/query", "attn/key", "attn/value", "attn/out",
                                       "mlp/up", "mlp/down")}
    for key in quantized_keys:
        assert after[key] == (before[key][0], jnp.dtype(scheme))
        assert after[key + "_scale"][1] == jnp.float32
    # the scale keeps the output channels (and the layers axis) and counts groups or is 1
    d, groups = 64, 64 // 32 if scheme == "int4" else 1
    assert after["layers/attn/query/kernel_scale"][0] == (2, groups, 4, 16)
    assert after["layers/attn/out/kernel_scale"][0] == (2, groups, 1, 64)  # [L, H, K, D]
    assert after["layers/mlp/down/kernel_scale"][0] == (2, 256 // 32 if bits == 4 else 1, d)
    assert after["embed/embedding_scale"][0] == (512, groups)  # one row per token
    others = {k: v for k, v in after.items() if k not in quantized_keys and
              not k.endswith(weights.SCALE_SUFFIX)}
    assert others == {k: v for k, v in before.items() if k not in quantized_keys}
    assert result.quantized_params == sum(np.prod(after[k][0]) for k in quantized_keys)
    assert result.scales == sum(np.prod(after[k + "_scale"][0]) for k in quantized_keys)


def test_bytes_on_disk(float_export, quantized):
    floats = directory_bytes(os.path.join(float_export, "params"))
    int8 = directory_bytes(os.path.join(quantized["int8"].path, "params"))
    int4 = directory_bytes(os.path.join(quantized["int4"].path, "params"))
    assert int8 == quantized["int8"].bytes_on_disk
    # 149k params: orbax's per-array files and metadata weigh a few % here; the main job's
    # model is measured in benchmarks/quantization_table.py
    assert int8 < 0.27 * floats, (int8, floats)  # measured 0.22
    assert int4 < 0.75 * int8, (int4, int8)  # measured 0.65


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_loads_onto_the_weights_shardings_on_a_model_parallel_mesh(quantized, scheme):
    path = quantized[scheme].path
    config_dict, _ = checkpoint.read_source(path)
    config = config_lib.from_json_dict(config_dict)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 4
    from fmjax import models
    model, cfg = models.build(config)
    mesh = mesh_lib.make_mesh(config)
    layouts, boxed = integer_params.layouts(model, cfg.seq_len, mesh)
    group = config_dict["quantization"]["group_size"]
    abstract, shardings = integer_params.unboxed_and_shardings(
        integer_params.abstract_quantized(boxed, layouts, schemes.get(scheme), group), mesh)
    params = flat(checkpoint_io.read(path, abstract, shardings))
    float_specs = flat(jax.tree.map(lambda s: s.spec, mesh_lib.tree_shardings(mesh, boxed),
                                    is_leaf=lambda x: hasattr(x, "spec")))
    assert params["layers/attn/query/kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert params["layers/attn/query/kernel_scale"].sharding.spec == P(None, None, "tensor", None)
    assert params["layers/mlp/up/kernel_scale"].sharding.spec == P(None, None, "tensor")
    assert params["layers/mlp/down/kernel_scale"].sharding.spec == P(None, None, "fsdp")
    assert params["embed/embedding_scale"].sharding.spec == P("tensor", None)
    for key in layouts:
        assert params[key].sharding.spec == float_specs[key]  # as the float weight
        assert params[key].dtype == jnp.dtype(scheme)
    replicated = flat(checkpoint_io.read(path, abstract, jax.tree.map(
        lambda _: mesh_lib.replicated(mesh), abstract)))
    for key, x in params.items():
        np.testing.assert_array_equal(np.asarray(x.astype(jnp.float32)),
                                      np.asarray(replicated[key].astype(jnp.float32)))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_load_run_gives_integer_params_equal_to_quantizing_in_memory(float_export, quantized,
                                                                     scheme):
    result = quantized[scheme]
    engine, params, tokenizer, step = loading.load_run(result.path)
    assert step == -1 and tokenizer is not None
    f_engine, f_params, _, _ = loading.load_run(float_export)
    layouts, _ = integer_params.layouts(f_engine.model, f_engine.model_config.seq_len,
                                        f_engine.mesh)
    expected = flat(integer_params.quantize_params(f_params, layouts, schemes.get(scheme),
                                                   result.group_size))
    got = flat(params)
    assert set(got) == set(expected)
    for key, x in got.items():
        assert x.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(np.asarray(x.astype(jnp.float32)),
                                      np.asarray(expected[key].astype(jnp.float32)))
    # no float copy of a quantized weight: the float values are the scales and the params
    # that were never quantized (norms, biases), nothing else
    floats = sum(x.size for x in got.values() if jnp.issubdtype(x.dtype, jnp.floating))
    assert floats == result.scales + result.float_params
    assert all(got[k].dtype == jnp.dtype(scheme) for k in layouts)
    assert flat(engine.abstract_state.params).keys() == got.keys()
    assert jax.tree.map(lambda a: (a.shape, a.dtype), engine.abstract_state.params) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), params)


def test_a_changed_int4_value_fails_its_checksum(quantized, tmp_path):
    original = quantized["int4"].path
    _, params, _, _ = loading.load_run(original)
    q = params["layers"]["mlp"]["up"]["kernel"]
    params["layers"]["mlp"]["up"]["kernel"] = q.at[0, 0, 0].set(
        jnp.where(q[0, 0, 0] == 1, 2, 1).astype(q.dtype))
    config_dict, tokenizer = checkpoint.read_source(original)
    path = str(tmp_path / "changed")
    checkpoint_io.write(path, params, config_dict, tokenizer)
    shutil.rmtree(os.path.join(path, "integrity"))  # the original's checksums
    shutil.copytree(os.path.join(original, "integrity"), os.path.join(path, "integrity"))
    with pytest.raises(checkpoint.DamagedCheckpoint, match="layers/mlp/up/kernel"):
        loading.load_run(path)
