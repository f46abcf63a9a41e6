"""Checkpoints in-process: resharding across meshes and device counts, checksums that catch
damage orbax misses (with fallback to the newest good step), retention, resume guard rails,
non-finite losses, export, and a failing async save."""
import glob
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmjax.training import checkpoint, engine as engine_lib, integrity, loop
from fmjax import mesh as mesh_lib
from fmjax import config as config_lib
from tests.helpers import packed_batch, tiny_config

TOKENIZER = b"not a real tokenizer, only bytes to round-trip"


def make_engine(config, mesh_shape, num_devices):
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    return engine_lib.build(config, mesh_lib.make_mesh(config, jax.devices()[:num_devices]))


def step(engine, state, seed):
    """One train step on a copy (the jitted step donates its input state)."""
    state = jax.tree.map(lambda x: x.copy(), state)
    batch = {k: jax.device_put(v, engine.batch_sharding) for k, v in packed_batch(seed=seed).items()}
    return engine.run_train_step(state, batch)


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def saved_run(workdir, steps=(2, 4), config=None):
    """A tiny llama trained a few steps with a checkpoint at each of `steps`."""
    config = config or tiny_config("llama")
    engine = make_engine(config, (2, 2, 2), 8)
    state = engine.init_state()
    manager = checkpoint.make_manager(workdir, keep=3, async_save=True)
    for i in range(1, max(steps) + 1):
        state, _ = step(engine, state, i)
        if i in steps:
            checkpoint.save(manager, i, state, None, config.to_dict(), TOKENIZER)
    manager.wait_until_finished()
    manager.close()
    return engine, state


def restore_latest(workdir, engine, messages):
    manager = checkpoint.make_manager(workdir, async_save=False)
    out = checkpoint.restore_latest(manager, workdir, engine.abstract_state, engine.shardings,
                                    log=messages.append)
    manager.close()
    return out


@pytest.mark.slow
def test_reshard_across_meshes_and_device_counts(tmp_path):
    """(2,2,2) on 8 devices -> (4,2,1) -> 1 device -> back to (2,2,2): every restore holds the same
    params and optimizer state, and the next step's loss equals the writer's to 1e-6."""
    config = tiny_config("llama")
    layouts = [((2, 2, 2), 8), ((4, 2, 1), 8), ((1, 1, 1), 1), ((2, 2, 2), 8)]
    engine = make_engine(config, *layouts[0])
    state, _ = step(engine, engine.init_state(), 1)
    for n, (shape, devices) in enumerate(layouts[1:]):
        workdir = str(tmp_path / str(n))
        manager = checkpoint.make_manager(workdir, async_save=False)
        checkpoint.save(manager, int(state.step), state, None, config.to_dict(), TOKENIZER)
        manager.close()
        _, next_metrics = step(engine, state, 7)

        engine = make_engine(tiny_config("llama"), shape, devices)
        saved_step, restored, _, tokenizer = restore_latest(workdir, engine, [])
        assert saved_step == int(state.step) and tokenizer == TOKENIZER
        assert restored.params["embed"]["embedding"].sharding.mesh.shape == engine.mesh.shape
        for a, b in zip(jax.tree.leaves(host(state)), jax.tree.leaves(host(restored))):
            np.testing.assert_array_equal(a, b)
        restored, metrics = step(engine, restored, 7)
        np.testing.assert_allclose(float(metrics["loss"]), float(next_metrics["loss"]), rtol=1e-6)
        state = restored


def test_checksums_do_not_depend_on_sharding():
    config = tiny_config("llama")
    a = make_engine(config, (2, 2, 2), 8)
    b = make_engine(tiny_config("llama"), (1, 1, 1), 1)
    state = a.init_state()
    moved = jax.device_put(host(state), b.shardings)
    assert integrity.tree_checksums(state) == integrity.tree_checksums(moved)
    flipped = jax.tree.map(np.array, host(state))  # writable copies
    flipped.params["embed"]["embedding"].view(np.uint32)[3, 5] ^= 1 << 7  # one bit
    assert integrity.mismatches(integrity.tree_checksums(state),
                                integrity.tree_checksums(flipped)) == ["params/embed/embedding"]


def _data_files(workdir, step):
    files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**"),
                                  recursive=True)
             if os.path.isfile(f) and "/d/" in f]
    assert files, "expected array data files under state/d/"
    return sorted(files, key=os.path.getsize)


def test_flipped_bytes_are_caught_and_the_run_falls_back(tmp_path):
    workdir = str(tmp_path)
    engine, _ = saved_run(workdir)
    # orbax alone restores the damaged step without complaint ...
    target = max(_data_files(workdir, 4), key=os.path.getsize)
    with open(target, "r+b") as f:
        f.seek(os.path.getsize(target) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    messages = []
    saved_step, state, _, _ = restore_latest(workdir, engine, messages)
    # ... fmjax names the step and the item, sets it aside and restores step 2
    assert saved_step == 2 and int(state.step) == 2
    assert "checkpoint step 4: item 'state'" in messages[0] and "falling back to step 2" in messages[0]
    assert os.listdir(os.path.join(workdir, "damaged_checkpoints"))[0].startswith("4.")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]


def test_truncated_file_and_damaged_config_fall_back(tmp_path):
    workdir = str(tmp_path)
    engine, _ = saved_run(workdir, steps=(2, 4, 6))
    target = max(_data_files(workdir, 6), key=os.path.getsize)
    with open(target, "r+b") as f:
        f.truncate(os.path.getsize(target) // 3)
    with open(os.path.join(workdir, "checkpoints", "4", "config", "metadata"), "a") as f:
        f.write(" ")  # still valid JSON? no: trailing text is tolerated, so change a value
    path = os.path.join(workdir, "checkpoints", "4", "config", "metadata")
    text = open(path).read().replace('"seed": 0', '"seed": 1')
    open(path, "w").write(text)
    messages = []
    saved_step, _, _, _ = restore_latest(workdir, engine, messages)
    assert saved_step == 2
    assert "checkpoint step 6: item 'state'" in messages[0]
    assert "checkpoint step 4: item 'config'" in messages[1]


def test_half_written_checkpoint_is_ignored(tmp_path):
    workdir = str(tmp_path)
    engine, _ = saved_run(workdir)
    # what a kill -9 during an async save leaves: an uncommitted temporary directory
    tmp = os.path.join(workdir, "checkpoints", "6.orbax-checkpoint-tmp-1234")
    os.makedirs(os.path.join(tmp, "state"))
    open(os.path.join(tmp, "state", "partial"), "wb").write(b"\0" * 100)
    messages = []
    saved_step, _, _, _ = restore_latest(workdir, engine, messages)
    assert saved_step == 4 and not messages


@pytest.mark.slow
def test_retention_keeps_last_k_and_every_mth(tmp_path):
    workdir = str(tmp_path)
    config = tiny_config()
    engine = make_engine(config, (8, 1, 1), 8)
    state = engine.init_state()
    manager = checkpoint.make_manager(workdir, keep=2, keep_period=4, async_save=True)
    for i in range(1, 11):
        checkpoint.save(manager, i, state, None, config.to_dict(), TOKENIZER)
    manager.wait_until_finished()
    assert manager.all_steps() == [4, 8, 9, 10]


def test_resume_guard_rails_name_the_keys():
    saved = tiny_config().to_dict()
    config = tiny_config(d_model=64)
    with pytest.raises(config_lib.ConfigError, match=r"model.d_model: 32 -> 64.*new --workdir"):
        loop.check_resume_config(saved, config)
    config = tiny_config()
    config.optim.learning_rate = 1e-3
    config.seed = 5
    with pytest.raises(config_lib.ConfigError, match=r"seed: 0 -> 5.*optim.learning_rate.*"
                                                     r"allow_config_change=True"):
        loop.check_resume_config(saved, config)
    config.allow_config_change = True
    loop.check_resume_config(saved, config)
    config = tiny_config()
    config.train.steps = 99  # harmless: more steps
    loop.check_resume_config(saved, config)


@pytest.mark.slow
def test_skip_mode_drops_a_nonfinite_update_and_keeps_going():
    config = tiny_config()
    config.train.on_nonfinite = "skip"
    engine = make_engine(config, (8, 1, 1), 8)
    state, _ = step(engine, engine.init_state(), 1)
    before = host(state)
    bad = {k: jax.device_put(v, engine.batch_sharding) for k, v in packed_batch(seed=2).items()}
    poisoned = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
    after, m = engine.run_train_step(jax.tree.map(lambda x: x.copy(), poisoned), bad)
    assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
    assert int(after.step) == 2  # the batch is consumed
    for a, b in zip(jax.tree.leaves(host(poisoned.opt_state)), jax.tree.leaves(host(after.opt_state))):
        np.testing.assert_array_equal(a, b)
    after, m = step(engine, state, 3)
    assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))
    assert not np.array_equal(host(after.params)["embed"]["embedding"],
                              before.params["embed"]["embedding"])


def test_export_and_load_params_only(tmp_path):
    workdir = str(tmp_path / "run")
    engine, state = saved_run(workdir)
    out = checkpoint.export_params(str(tmp_path / "export"), state.params, {"a": 1}, TOKENIZER)
    assert {"config", "integrity", "params", "tokenizer"} <= set(os.listdir(out))
    with ocp.PyTreeCheckpointer() as ckptr:  # no optimizer state in the export
        assert list(ckptr.metadata(os.path.join(out, "params")).item_metadata) == ["params"]
    single = make_engine(tiny_config("llama"), (1, 1, 1), 1)
    for source in (workdir, os.path.join(workdir, "checkpoints", "2"), out):
        params, _, tokenizer = checkpoint.load_params(source, single.abstract_state.params,
                                                      single.shardings.params)
        assert tokenizer == TOKENIZER
        if source != os.path.join(workdir, "checkpoints", "2"):
            for a, b in zip(jax.tree.leaves(host(state.params)), jax.tree.leaves(host(params))):
                np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="not a workdir"):
        checkpoint.load_params(str(tmp_path), single.abstract_state.params, single.shardings.params)


def test_a_failing_async_save_is_an_error(tmp_path, monkeypatch):
    config = tiny_config()
    engine = make_engine(config, (8, 1, 1), 8)
    state = engine.init_state()
    manager = checkpoint.make_manager(str(tmp_path), async_save=True)

    def broken(self, directory, *args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", broken)
    with pytest.raises(Exception, match="disk full"):
        checkpoint.save(manager, 1, state, None, config.to_dict(), TOKENIZER)
        manager.wait_until_finished()
