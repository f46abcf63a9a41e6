"""orbax CheckpointManager for a workdir: every step saves a Composite of
  state   the TrainState (params, optimizer state, step, rng), sharded arrays
  data    the grain iterator state (one JSON per process)
  config  the resolved config (JSON)
so a checkpoint restores the whole run. Restore reshards onto whatever mesh the target
shardings describe.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

STATE, DATA, CONFIG = "state", "data", "config"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def tokenizer_path(workdir: str) -> str:
    """The run's own copy of its tokenizer (written at startup, read by generate/finetune)."""
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "tokenizer.model")


def make_manager(workdir: str, *, keep: int = 3, save_interval_steps: int = 1,
                 async_save: bool = True) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=(STATE, DATA, CONFIG))


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, config_dict: dict,
         *, force: bool = False) -> bool:
    args = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_dict)}
    if data_iterator is not None:
        args[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**args), force=force)


def _restore_args(abstract_state, shardings):
    """ShapeDtypeStructs carrying the target shardings: orbax reads each shard where it goes."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, shardings,
            data_iterator=None) -> tuple[Any, dict]:
    """(state on the target shardings, saved config dict); advances `data_iterator` in place."""
    args = {STATE: ocp.args.StandardRestore(_restore_args(abstract_state, shardings)),
            CONFIG: ocp.args.JsonRestore()}
    if data_iterator is not None:
        args[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return restored[STATE], restored[CONFIG]


def read_config(workdir: str, step: int | None = None) -> dict:
    """The config saved with a checkpoint (latest when step is None), without restoring arrays."""
    manager = make_manager(workdir, async_save=False)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    restored = manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))
    manager.close()
    return dict(restored[CONFIG])
