"""The suite compiles with fast-compiling XLA:CPU settings (tests/helpers.py,
FAST_COMPILE_XLA_FLAGS); users' runs keep XLA's defaults. The train step compiled with the
defaults gives the same losses, gradient norms and parameters on a sharded mesh."""
import jax
import numpy as np
import pytest

from fmjax.training import engine as engine_lib
from fmjax import mesh as mesh_lib
from tests.helpers import packed_batch, tiny_config

# XLA's own defaults (xla/debug_options_flags.cc), which FAST_COMPILE_XLA_FLAGS overrides
XLA_DEFAULTS = {"xla_cpu_use_fusion_emitters": True, "xla_backend_optimization_level": 3}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_xla_default_compile_trains_like_the_suites_fast_compile(family):
    config = tiny_config(family)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    engine = engine_lib.build(config, mesh_lib.make_mesh(config))
    batches = [{k: jax.device_put(v, engine.batch_sharding)
                for k, v in packed_batch(seed=step).items()} for step in range(3)]
    with mesh_lib.activate(engine.mesh):
        lowered = engine.train_step.lower(engine.abstract_state, batches[0])
        steps = {"fast": lowered.compile(), "default": lowered.compile(XLA_DEFAULTS)}
    assert steps["fast"].as_text() != steps["default"].as_text()  # the options took effect
    results = {}
    for name, step in steps.items():
        state, rows = engine.init_state(), []
        for batch in batches:
            state, metrics = step(state, batch)
            rows.append([float(metrics["loss"]), float(metrics["grad_norm"])])
        results[name] = np.asarray(rows), jax.device_get(state.params)
    np.testing.assert_allclose(results["fast"][0], results["default"][0], rtol=1e-5)
    assert results["fast"][0][-1, 0] < results["fast"][0][0, 0]  # it trains
    # except GPT-2's key bias: its gradient is exactly zero (softmax ignores a shift of a row's
    # scores), so AdamW moves it by lr * roundoff / eps, ~1e-6, differently in any two compiles
    fast, default = (jax.tree_util.tree_flatten_with_path(results[k][1])[0]
                     for k in ("fast", "default"))
    for (path, a), (_, b) in zip(fast, default):
        if jax.tree_util.keystr(path, simple=True, separator="/").endswith("key/bias"):
            assert np.abs(a).max() < 1e-4 and np.abs(b).max() < 1e-4
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(path))
