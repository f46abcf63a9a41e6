"""A quantized model (params: integers + scales) against the float one: its logits are bit for
bit those of the float model run on the dequantized weights (the integers times their scales
are computed inside the jitted apply, nothing else changes), and close to the float model's;
the compiled program takes the integers as its inputs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import mesh as mesh_lib, models
from fmjax.quantization import integer_params, schemes, weights
from tests.helpers import tiny_config

# max |logit - float logit| / max |float logit| of tiny random models (measured: int8 about
# 0.01, int4 in groups of 16 about 0.12)
TOLERANCE = {"int8": 0.03, "int4": 0.25}
CASES = [("gpt2", {}), ("llama", {"scan_layers": False}), ("t5", {})]


def build(family, **model):
    config = tiny_config(family, **model)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    model, cfg = models.build(config)
    mesh = mesh_lib.make_mesh(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 128, (2, cfg.seq_len)), jnp.int32)
    inputs = (tokens, tokens[:, ::-1]) if family == "t5" else (tokens,)
    with mesh_lib.activate(mesh):
        params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), *inputs)["params"])
    layouts, _ = integer_params.layouts(model, cfg.seq_len, mesh)
    return model, mesh, params, layouts, inputs


def dequantized(qparams, layouts):
    """The float params a reference model gets: each weight = its integers x scales, computed
    outside the model."""
    out = integer_params.mutable(qparams)
    for key in layouts:
        parent, name = key.rsplit("/", 1) if "/" in key else ("", key)
        node = integer_params.get_leaf(out, parent) if parent else out
        node[name] = weights.dequantize(node[name], node.pop(name + weights.SCALE_SUFFIX))
    return out


@pytest.mark.parametrize("family,model_kw", CASES)
@pytest.mark.parametrize("scheme,group", [("int8", 0), ("int4", 16)])
def test_logits_equal_dequantize_then_matmul_and_close_to_float(family, model_kw, scheme, group):
    model, mesh, params, layouts, inputs = build(family, **model_kw)
    qparams = integer_params.quantize_params(params, layouts, schemes.get(scheme), group)
    apply = jax.jit(lambda p, *x: model.apply({"params": p}, *x))
    with mesh_lib.activate(mesh):
        quantized = np.asarray(apply(qparams, *inputs))
        reference = np.asarray(apply(dequantized(qparams, layouts), *inputs))
        full = np.asarray(apply(params, *inputs))
    np.testing.assert_array_equal(quantized, reference)
    error = np.abs(quantized - full).max() / np.abs(full).max()
    assert 0 < error < TOLERANCE[scheme], error


def test_every_dense_kernel_and_embedding_is_quantized():
    _, _, params, layouts, _ = build("llama", scan_layers=False)
    matrices = {integer_params.leaf_key(p)
                for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if x.ndim >= 2}
    assert set(layouts) == matrices  # llama: every matrix is a Dense kernel or the embedding
    assert layouts["layer_0/attn/out/kernel"].contract_axes == (0, 1)  # [H, K, D]
    assert layouts["lm_head/kernel"].contract_axes == (0,)
    assert layouts["embed/embedding"].contract_axes == (1,)  # rows (vocab) are the channels
    _, _, _, scanned, _ = build("gpt2")
    assert scanned["layers/attn/query/kernel"].contract_axes == (1,)  # after the layers axis
    assert scanned["layers/attn/query/kernel"].names == ("layers", "embed", "heads", "head_dim")


def test_the_compiled_apply_takes_integer_weights():
    model, mesh, params, layouts, inputs = build("gpt2")
    qparams = integer_params.quantize_params(params, layouts, schemes.get("int4"), 16)
    with mesh_lib.activate(mesh):
        text = jax.jit(lambda p, *x: model.apply({"params": p}, *x)).lower(
            qparams, *inputs).as_text()
    main = text[text.index("func.func public @main("):]
    signature = main[:main.index(") -> (")]  # the program's inputs
    query_shape = "x".join(map(str, layouts["layers/attn/query/kernel"].shape))
    assert f"tensor<{query_shape}xi4>" in signature
    assert f"tensor<{query_shape}xf32>" not in signature


def test_float_params_without_scales_are_refused_clearly():
    model, mesh, params, layouts, inputs = build("gpt2")
    qparams = integer_params.quantize_params(params, layouts, schemes.get("int8"), 0)
    del qparams["layers"]["mlp"]["up"]["kernel_scale"]
    with pytest.raises(ValueError, match="layers/mlp/up/kernel is int8 without kernel_scale"):
        with mesh_lib.activate(mesh):
            jax.jit(lambda p, *x: model.apply({"params": p}, *x))(qparams, *inputs)
