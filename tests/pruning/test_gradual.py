"""Gradual pruning in the train step (fmjax/pruning/hook.py) on a tiny model over 8 devices:
the sparsity follows the schedule exactly and reaches the target, pruned weights stay exactly
0.0 through later Adam updates, the masks live in the optimizer state, and a run restored from
a checkpoint mid-ramp equals an uninterrupted one bit for bit (masks included)."""
import jax
import numpy as np
import pytest

from fmjax import config as config_lib, mesh as mesh_lib
from fmjax.pruning import hook, masks
from fmjax.pruning.schedule import Schedule
from fmjax.training import checkpoint, engine as engine_lib
from tests.helpers import packed_batch, tiny_config

STEPS = 12


def pruning_config(pattern="unstructured", target=0.75, family="gpt2"):
    c = tiny_config(family)
    c.mesh.data, c.mesh.fsdp = 4, 2  # params sharded over fsdp: masks shard like them
    c.train.steps = STEPS
    c.prune.update(target_sparsity=target, pattern=pattern, start_step=2, end_step=8,
                   frequency=2)
    return c


def pruning_engine(config):
    return hook.attach(config, engine_lib.build(config, mesh_lib.make_mesh(config)))


def step(engine, state, i):
    state = jax.tree.map(lambda x: x.copy(), state)  # the jitted step donates its input
    batch = {k: jax.device_put(v, engine.batch_sharding)
             for k, v in packed_batch(seed=i).items()}
    return engine.run_train_step(state, batch)[0]


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


@pytest.fixture(scope="module")
def run():
    """(engine, targets, host states after steps 0..STEPS) of the unstructured config."""
    engine = pruning_engine(pruning_config())
    state, states = engine.init_state(), []
    states.append(host(state))
    for i in range(1, STEPS + 1):
        state = step(engine, state, i)
        states.append(host(state))
    return engine, hook.targets_of(engine), states


def test_sparsity_follows_the_schedule_exactly_and_reaches_the_target(run):
    engine, targets, states = run
    schedule = Schedule(0.75, 2, 8, 2)
    held = 0.0
    for t, state in enumerate(states):
        if schedule.is_update(t):
            held = schedule.sparsity(t)
        weights = masks.flat(state.params)
        for path, target in targets.items():
            n = target.matrix_shape[1] * target.matrix_shape[2]
            zeros = (weights[path].reshape(target.matrix_shape) == 0).sum(axis=(1, 2))
            assert (zeros == np.floor(np.float32(held) * n + 0.5)).all(), (t, path, zeros)
    assert masks.zero_fraction(states[-1].params, targets) == 0.75
    # embeddings, norms and biases are dense at the end
    final = masks.flat(states[-1].params)
    assert all((final[p] != 0).all() for p in final if p[-1] in ("embedding", "scale"))


def test_pruned_weights_stay_exactly_zero_and_the_masks_are_in_the_state(run):
    engine, targets, states = run
    at_end = masks.flat(states[8].params)
    for state in states[8:]:
        kept = masks.flat(state.opt_state.masks)
        weights = masks.flat(state.params)
        for path in targets:
            np.testing.assert_array_equal(kept[path], at_end[path] != 0)  # fixed since step 8
            assert (weights[path][~kept[path]] == 0).all()
            assert not np.signbit(weights[path][~kept[path]]).any()  # +0.0, not -0.0
    # the other weights kept training (Adam's moments for pruned ones do not matter)
    later = masks.flat(states[-1].params)
    assert any(not np.array_equal(later[p], at_end[p]) for p in targets)
    assert int(states[-1].opt_state.step) == STEPS == int(states[-1].step)


def test_two_four_gradually_holds_the_pattern():
    engine = pruning_engine(pruning_config("2:4", 0.5, "llama"))
    targets = hook.targets_of(engine)
    state = engine.init_state()
    for i in range(1, 10):
        state = step(engine, state, i)
        weights = masks.flat(host(state.params))
        for path, target in targets.items():
            b, n_in, o = target.matrix_shape
            nonzero = (weights[path].reshape(b, n_in // 4, 4, o) != 0).sum(axis=2)
            assert (nonzero == (4 if i < 8 else 2)).all(), (i, path)  # all at once, at step 8


def test_restored_mid_ramp_equals_uninterrupted_bitwise(run, tmp_path):
    """Saved at step 5 (between mask updates), restored into a fresh engine and run to the
    end: params, optimizer state and masks equal the uninterrupted run's to the bit."""
    engine, _, states = run
    config = pruning_config()
    state = engine.init_state()
    for i in range(1, 6):
        state = step(engine, state, i)
    manager = checkpoint.make_manager(str(tmp_path), async_save=False)
    checkpoint.save(manager, 5, state, None, config.to_dict(), b"tokenizer")
    manager.close()
    fresh = pruning_engine(pruning_config())
    manager = checkpoint.make_manager(str(tmp_path), async_save=False)
    restored, _, _ = checkpoint.restore(manager, 5, fresh.abstract_state, fresh.shardings)
    manager.close()
    for i in range(6, STEPS + 1):
        restored = step(fresh, restored, i)
    a, b = host(restored), states[-1]
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(x)[0] for x in (a, b))
    assert len(flat_a) == len(flat_b)
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def test_resume_refuses_to_switch_pruning_on_or_off(run, tmp_path):
    config = pruning_config()
    manager = checkpoint.make_manager(str(tmp_path), async_save=False)
    checkpoint.save(manager, 1, run[2][1], None, config.to_dict(), b"tokenizer")
    manager.close()
    off = pruning_config(target=0.0)
    with pytest.raises(config_lib.ConfigError, match="written with target_sparsity = 0.75"):
        hook.check_resume(off, str(tmp_path))
    later = pruning_config()
    later.prune.end_step = 10
    with pytest.raises(config_lib.ConfigError, match="prune.end_step: 8 -> 10"):
        hook.check_resume(later, str(tmp_path))
    later.allow_config_change = True
    hook.check_resume(later, str(tmp_path))
    hook.check_resume(config, str(tmp_path))


def test_attach_refuses_lora_and_an_unreachable_end():
    c = pruning_config()
    c.lora.rank = 4
    with pytest.raises(config_lib.ConfigError, match="set --config.lora.rank=0"):
        hook.attach(c, None)
    c = pruning_config()
    c.prune.end_step = STEPS + 1
    with pytest.raises(config_lib.ConfigError, match="end_step to at most 12"):
        hook.attach(c, None)
