"""model.attention_impl = "splash" (fmjax/kernels/tpu/splash_attention.py): the Pallas TPU kernel, run here
in Pallas interpret mode, against fmjax's attention core and jax.nn attention (values and
gradients, one device and a sharded mesh); compiled for TPU it is the Mosaic kernel."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax.nn import attention, softmax_attention as attention_core
from fmjax import mesh as mesh_lib, models, objectives
from fmjax.kernels.tpu import splash_attention
from fmjax.config import ConfigError
from tests.helpers import packed_batch, tiny_config


@pytest.mark.parametrize("causal", [True, False])
def test_splash_matches_the_attention_core_with_gradients(causal):
    rng = np.random.default_rng(0)
    b, t, h, k = 2, 128, 2, 16
    q, k_, v, dout = (jnp.asarray(rng.standard_normal((b, t, h, k)), jnp.float32)
                      for _ in range(4))
    segments = np.ones((b, t), np.int32)
    segments[:, 50:] = 2
    segments[1, 120:] = 0  # padding: no real token reads it
    positions = np.broadcast_to(np.concatenate([np.arange(50), np.arange(t - 50)]), (b, t))
    seg, pos = jnp.asarray(segments), jnp.asarray(positions.astype(np.int32))
    mask = attention.attention_mask(seg, seg, pos, pos, causal=causal, same_row=causal)
    real = jnp.asarray(segments > 0)[:, :, None, None]
    dout = dout * real

    def value_and_grads(fn):
        out, vjp = jax.vjp(fn, q, k_, v)
        return (out * real, *vjp(dout))
    ref = value_and_grads(lambda q, k, v: attention_core.attention_core(q, k, v, mask))
    got = value_and_grads(lambda q, k, v: splash_attention.attention(q, k, v, seg, causal=causal))
    for name, a, b_ in zip(("out", "dq", "dk", "dv"), ref, got):
        np.testing.assert_allclose(a, b_, rtol=1e-5, atol=5e-6, err_msg=name)


def _loss_and_grads(impl, mesh, kv=0):
    config = tiny_config("llama" if kv else "gpt2", init_std=0.2, attention_impl=impl,
                         seq_len=128, n_heads=4, n_kv_heads=kv)
    model, _ = models.build(config)
    batch = {k: jnp.asarray(v) for k, v in packed_batch(seq=128, split=90).items()}
    example = objectives.get(config).transform(batch, None)
    with mesh_lib.activate(mesh):
        params = model.init(jax.random.PRNGKey(0), batch["tokens"])["params"]
        params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                              is_leaf=lambda x: hasattr(x, "value"))

        @jax.jit
        def loss_and_grads(p):
            def loss(p):
                logits = model.apply({"params": p}, **example["inputs"])
                ce, _, w = objectives.cross_entropy(logits, example["targets"],
                                                    example["weights"])
                return ce / w
            return jax.value_and_grad(loss)(p)
        return loss_and_grads(params)


@pytest.mark.slow
def test_splash_model_on_a_sharded_mesh_equals_xla_attention():
    """Under a (data 2, fsdp 2, tensor 2) mesh the kernel runs per device through shard_map;
    loss and gradients equal jax.nn attention on one device (llama, 4 heads over 2 kv heads)."""
    one = mesh_lib.make_mesh(tiny_config(), jax.devices()[:1])
    config8 = tiny_config()
    config8.mesh.data, config8.mesh.fsdp, config8.mesh.tensor = 2, 2, 2
    eight = mesh_lib.make_mesh(config8, jax.devices()[:8])
    loss_a, grads_a = _loss_and_grads("xla", one, kv=2)
    loss_b, grads_b = _loss_and_grads("splash", eight, kv=2)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_splash_refuses_what_it_cannot_mask_and_lengths_it_cannot_tile():
    t5 = tiny_config("t5", attention_impl="splash", seq_len=128)
    model, _ = models.build(t5)
    tokens = jnp.ones((2, 128), jnp.int32)
    with pytest.raises(ConfigError, match="attention_impl = 'splash'.*attention_impl=xla"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
    with pytest.raises(ConfigError, match="model.attention_impl.*seq_len = 700"):
        models.resolve(tiny_config(attention_impl="splash", seq_len=700).model)
    assert splash_attention.length_ok(256) and splash_attention.length_ok(2048)
