"""Tiny configs, batches and child-process environments shared by the tests."""
import os

import numpy as np

from fmjax.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# XLA:CPU settings every test process compiles with (tests/conftest.py), and the CLI processes
# the tests start (`cpu_env`): the classic elemental emitters at LLVM -O0 compile 3-4x faster
# than the default fusion emitters at -O3, and the suite is mostly compiles of tiny models
# (measured: 553 of 773 CPU-seconds in the test processes; 214 with these flags). The code
# under test is the same; XLA's kernels run slower and may round differently, so a test
# compares results compiled under the same flags, as every test here does. The main job, the
# benchmarks and users' runs keep XLA's defaults, and tests/training/test_xla_defaults.py checks that a
# train step compiled with those trains like this one.
FAST_COMPILE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"


def cpu_env(devices: int, **extra) -> dict:
    """The environment of a CLI child process with `devices` CPU devices."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
        f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAGS}"), **extra)


def tiny_config(family="gpt2", **model):
    c = base_config()
    c.model.family = family
    c.model.vocab_size = 128
    c.model.seq_len = 32
    c.model.d_model = 32
    c.model.n_layers = 2
    c.model.n_heads = 8
    c.model.n_kv_heads = 8 if family == "llama" else 0
    for k, v in model.items():
        c.model[k] = v
    c.train.global_batch_size = 8
    c.train.steps = 20
    c.optim.warmup_steps = 2
    c.optim.learning_rate = 1e-2
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, 1
    return c


def model_loss_and_grads(config, batch):
    """(mean next-token cross-entropy, its gradients) of `config`'s model on `batch`, params
    from PRNGKey(0); jitted. (jax is imported here: conftest imports this module first.)"""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from fmjax import models, objectives
    model, cfg = models.build(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0),
                                          jnp.zeros((1, cfg.seq_len), jnp.int32))["params"])
    example = objectives.get(config).transform(batch, None)

    def loss(p):
        logits = model.apply({"params": p}, **example["inputs"])
        ce, _, w = objectives.cross_entropy(logits, example["targets"], example["weights"])
        return ce / w
    return jax.jit(jax.value_and_grad(loss))(params)


def packed_batch(batch=8, seq=32, vocab=128, seed=0, split=20):
    """Rows holding two documents: [0, split) and [split, seq)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab, (batch, seq)).astype(np.int32)
    segment_ids = np.ones((batch, seq), np.int32)
    segment_ids[:, split:] = 2
    positions = np.concatenate([np.arange(split), np.arange(seq - split)])
    positions = np.broadcast_to(positions, (batch, seq)).astype(np.int32).copy()
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
