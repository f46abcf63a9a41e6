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


# ---- the fine-tune stage in-process: runs, preemption and bitwise resume --------------------

def finetune_keeping_final(config, workdir, final: list):
    """finetune_stage.finetune(config, workdir)'s report; `final` receives the host copy of the
    train state at the run's last step (none when it was preempted first)."""
    import jax

    from fmjax.training import finetune_stage, loop

    def keep(step, state, ctx):
        final.append(jax.tree.map(np.asarray, jax.device_get(state)))
    return finetune_stage.finetune(config, workdir, hooks=[loop.Hook(keep, every=0)])


def metrics_rows(workdir) -> list[dict]:
    import json
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def preempted_and_resumed(monkeypatch, step: int, config, workdir):
    """The host train state at the end of a fine-tune into `workdir` that gets SIGTERM right
    after saving the checkpoint of `step` (the loop stops there, as on a preemption) and is then
    run again with the same config (it resumes from that checkpoint)."""
    import signal

    from fmjax.training import checkpoint
    original = checkpoint.save

    def save_then_signal(manager, saved_step, *args, **kwargs):
        out = original(manager, saved_step, *args, **kwargs)
        if saved_step == step and not os.environ.get("RESUMED"):
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(checkpoint, "save", save_then_signal)
    final = []
    first = finetune_keeping_final(config, workdir, final)
    assert first.preempted and first.steps == step and not final
    monkeypatch.setenv("RESUMED", "1")
    finetune_keeping_final(config, workdir, final)
    return final[0]


def assert_trees_bitwise_equal(a, b) -> list:
    """Same leaves (paths, dtypes, bytes) in trees `a` and `b`; returns `a`'s (path, leaf)."""
    import jax
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(x)[0] for x in (a, b))
    assert len(flat_a) == len(flat_b)
    for (path, x), (path_b, y) in zip(flat_a, flat_b):
        assert path == path_b and x.dtype == y.dtype and x.tobytes() == y.tobytes(), \
            jax.tree_util.keystr(path)
    return flat_a
