"""The switch that turns fmjax's C++ kernels for XLA:CPU off (fmjax/kernels/cpu/ffi.py)."""
import jax
import jax.numpy as jnp
import pytest

from fmjax.kernels.cpu import adamw as cpu_adamw, attention as cpu_attention, cross_entropy as cpu_cross_entropy, dense as cpu_dense, ffi as cpu_ffi, layer_norm as cpu_layer_norm
from fmjax.nn import layers

pytestmark = pytest.mark.skipif(cpu_ffi.compiler() is None, reason="no C++ compiler")

KERNELS = (cpu_adamw, cpu_attention, cpu_cross_entropy, cpu_dense, cpu_layer_norm)


def _dense_and_norm_grads(x, w, b, scale):
    def loss(x, w, b, scale):
        return jnp.sum(layers.layer_norm(layers.matmul(x, w, b), scale, b, 1e-5) ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(x, w, b, scale).as_text()


def test_fmjax_cpu_kernels_0_turns_every_kernel_off(monkeypatch):
    x, w = jnp.ones((64, 32)), jnp.ones((32, 48)) / 32
    b, scale = jnp.linspace(0, 1, 48), jnp.ones((48,))
    on = _dense_and_norm_grads(x, w, b, scale)
    assert "fmjax_cpu_dense" in on and "fmjax_cpu_layer_norm" in on
    monkeypatch.setenv("FMJAX_CPU_KERNELS", "0")
    for module in KERNELS:
        off = cpu_ffi.loader(module.SOURCE, module._TARGETS)  # read at first use: a new one
        assert off() == "turned off by FMJAX_CPU_KERNELS=0"
        monkeypatch.setattr(module, "unavailable", off)
    assert "fmjax_cpu" not in _dense_and_norm_grads(x, w, b, scale)
    monkeypatch.setenv("FMJAX_CPU_KERNELS", "1")
    assert cpu_ffi.loader(cpu_dense.SOURCE, cpu_dense._TARGETS)() is None
