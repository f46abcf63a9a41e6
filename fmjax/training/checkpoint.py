"""orbax checkpoints of a run, self-contained and verified.

One `CheckpointManager` per workdir (WORKDIR/checkpoints/STEP/). Every step holds the items
  state      the TrainState (params, optimizer state, step, rng): sharded arrays
  data       the grain iterator state (one JSON per process)
  config     the resolved config (JSON)
  tokenizer  the SentencePiece model file the run trains with (empty in a params-only
             checkpoint converted from a Hugging Face model without one, fmjax/hf/: its
             readers then take --config.tokenizer.path or --tokenizer)
  integrity  checksums of all of the above (fmjax.training.integrity), written in the same commit
so one step directory restores the whole run, onto any mesh (restore reads each shard where the
target shardings put it).

orbax commits a step atomically (a temporary directory renamed when every item is written), so
a save killed half-way leaves the previous steps untouched and is ignored. What orbax does not
notice is damage after the commit: a flipped byte restores as a wrong value. `restore_latest`
recomputes the checksums after reading, names the step and the item that do not verify, moves
that step to WORKDIR/damaged_checkpoints/ (nothing is deleted) and falls back to the next newest.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

from etils import epath
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from fmjax.training import integrity
from fmjax.data import streams

STATE, DATA, CONFIG, TOKENIZER, INTEGRITY = "state", "data", "config", "tokenizer", "integrity"
PARAMS = "params"  # the one array item of a params-only export
ITEMS = (STATE, DATA, CONFIG, TOKENIZER, INTEGRITY)
DAMAGED_DIR = "damaged_checkpoints"


class DamagedCheckpoint(RuntimeError):
    """A committed checkpoint whose item cannot be read or does not match its checksum."""

    def __init__(self, step: int, item: str, detail: str):
        super().__init__(f"checkpoint step {step}: item '{item}' is damaged: {detail}")
        self.step, self.item, self.detail = step, item, detail


# ---- a plain file as a checkpoint item (the tokenizer model) ----------------------------

class FileHandler(ocp.CheckpointHandler):
    """Writes bytes to DIR/file on the primary host; restores them."""
    FILENAME = "file"

    def save(self, directory: epath.Path, args: "FileSave"):
        if jax.process_index() == 0:
            (directory / self.FILENAME).write_bytes(args.data)

    def restore(self, directory: epath.Path, args: "FileRestore" = None) -> bytes:
        return (directory / self.FILENAME).read_bytes()

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(FileHandler, for_save=True)
@dataclasses.dataclass
class FileSave(ocp.args.CheckpointArgs):
    data: bytes


@ocp.args.register_with_handler(FileHandler, for_restore=True)
@dataclasses.dataclass
class FileRestore(ocp.args.CheckpointArgs):
    pass


# ---- paths ------------------------------------------------------------------------------

def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(_abs(workdir), "checkpoints")


def tokenizer_path(workdir: str) -> str:
    """The run's own copy of its tokenizer (written at startup, read by generate/finetune)."""
    return os.path.join(_abs(workdir), "tokenizer.model")


# ---- the manager --------------------------------------------------------------------------

def make_manager(workdir: str, *, keep: int = 3, keep_period: int = 0, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """Keeps the newest `keep` steps plus every step that is a multiple of `keep_period`.
    orbax deletes old steps only after a new one has committed, so the newest good
    checkpoint is never removed by a save that fails or is killed."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, keep_period=keep_period or None,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def _state_checksums(state) -> dict:
    return integrity.tree_checksums(state)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, config_dict: dict,
         tokenizer_bytes: bytes, *, force: bool = True) -> bool:
    """Starts saving `step` (asynchronously if the manager is async). The caller should have
    made sure the state is the one after `step` updates and that it is finite."""
    data_state = data_iterator.get_state() if data_iterator is not None else None
    checks = {STATE: _state_checksums(state), CONFIG: integrity.json_digest(config_dict),
              TOKENIZER: integrity.bytes_digest(tokenizer_bytes),
              DATA: integrity.json_digest(data_state) if data_state is not None else None,
              "step": int(step), "time": time.time()}
    args = {STATE: ocp.args.StandardSave(state), CONFIG: ocp.args.JsonSave(config_dict),
            TOKENIZER: FileSave(tokenizer_bytes), INTEGRITY: ocp.args.JsonSave(checks)}
    if data_iterator is not None:
        args[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
    return manager.save(step, args=ocp.args.Composite(**args), force=force)


def _target(abstract_tree, shardings):
    """ShapeDtypeStructs carrying the target shardings: orbax reads each shard where it goes."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_tree, shardings)


def _restore_item(manager, step: int, item: str, args):
    try:
        return manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as e:  # noqa: BLE001  (any read failure means the item is unusable)
        raise DamagedCheckpoint(step, item, f"{type(e).__name__}: {e}") from e


def _restore_data(manager, step: int, data_iterator) -> bool:
    """The iterator state of this process, or, when the checkpoint was written by another
    number of processes, the merged states of all of them: a training iterator's state is
    keyed by row stream (fmjax/data/streams.py), so each process picks the streams it owns
    now. Other iterators (fine-tuning) take process 0's. True = this process's own state."""
    directory = epath.Path(manager.directory) / str(step) / DATA
    own = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if own.exists() or not directory.exists():
        _restore_item(manager, step, DATA, grain.checkpoint.CheckpointRestore(data_iterator))
        return True
    written = {path.name: path for path in directory.glob("process_*-of-*.json")}
    zero = [name for name in written if name.startswith("process_0-of-")]
    if not zero:
        raise DamagedCheckpoint(step, DATA, f"no iterator state in {directory}")
    try:
        states = [json.loads(path.read_text()) for path in written.values()]
        if all(streams.STATE_KEY in state for state in states):
            data_iterator.set_state(streams.merge_states(states))
        else:
            data_iterator.set_state(json.loads(written[zero[0]].read_text()))
    except Exception as e:  # noqa: BLE001
        raise DamagedCheckpoint(step, DATA, f"{type(e).__name__}: {e}") from e
    if hasattr(data_iterator, "start_prefetch"):
        data_iterator.start_prefetch()
    return False


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, shardings,
            data_iterator=None) -> tuple[Any, dict, bytes]:
    """(state on the target shardings, saved config dict, tokenizer bytes), verified against
    the step's checksums; advances `data_iterator` in place. Raises DamagedCheckpoint."""
    checks = _restore_item(manager, step, INTEGRITY, ocp.args.JsonRestore())
    config_dict = _restore_item(manager, step, CONFIG, ocp.args.JsonRestore())
    if integrity.json_digest(config_dict) != checks[CONFIG]:
        raise DamagedCheckpoint(step, CONFIG, "content does not match its checksum")
    tokenizer_bytes = _restore_item(manager, step, TOKENIZER, FileRestore())
    if integrity.bytes_digest(tokenizer_bytes) != checks[TOKENIZER]:
        raise DamagedCheckpoint(step, TOKENIZER, "content does not match its checksum")
    state = _restore_item(manager, step, STATE,
                          ocp.args.StandardRestore(_target(abstract_state, shardings)))
    bad = integrity.mismatches(checks[STATE], _state_checksums(state))
    if bad:
        raise DamagedCheckpoint(step, STATE, f"{len(bad)} arrays do not match their checksums "
                                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})")
    if data_iterator is not None:
        own = _restore_data(manager, step, data_iterator)
        # Only process 0's iterator state is in the checksum file (it is written by process 0).
        if own and jax.process_index() == 0 and checks[DATA] is not None:
            if integrity.json_digest(data_iterator.get_state()) != checks[DATA]:
                raise DamagedCheckpoint(step, DATA, "content does not match its checksum")
    return state, dict(config_dict), tokenizer_bytes


def set_aside(workdir: str, step: int) -> str:
    """Moves a damaged step out of the manager's directory (kept for inspection)."""
    dest_root = os.path.join(_abs(workdir), DAMAGED_DIR)
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, f"{step}.{int(time.time())}")
    if jax.process_index() == 0:
        shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), dest)
    return dest


def restore_latest(manager: ocp.CheckpointManager, workdir: str, abstract_state, shardings,
                   data_iterator=None, *, log=print):
    """Restores the newest checkpoint that verifies: (step, state, config dict, tokenizer
    bytes), or None when there is none. Damaged steps are reported and set aside."""
    while (step := manager.latest_step()) is not None:
        try:
            return (step, *restore(manager, step, abstract_state, shardings, data_iterator))
        except DamagedCheckpoint as e:
            dest = set_aside(workdir, step)
            manager.reload()
            fallback = manager.latest_step()
            log(f"WARNING: {e}. Moved it to {dest}; "
                + (f"falling back to step {fallback}." if fallback is not None
                   else "no older checkpoint remains, starting from scratch."))
    return None


# ---- reading a finished run without its optimizer ------------------------------------------

def read_config(workdir: str, step: int | None = None) -> dict:
    """The config saved with a checkpoint (latest when step is None), without restoring arrays."""
    manager = make_manager(workdir, async_save=False, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    config_dict = _restore_item(manager, step, CONFIG, ocp.args.JsonRestore())
    manager.close()
    return dict(config_dict)


# ---- params only: exports for fine-tuning and sharing ---------------------------------------

def export_params(path: str, params, config_dict: dict, tokenizer_bytes: bytes) -> str:
    """Writes PATH/{params, config, tokenizer, integrity}: no optimizer state. tokenizer_bytes
    may be b"" (no tokenizer; see the module docstring)."""
    path = _abs(path)
    checks = {STATE: {k: v for k, v in _state_checksums({PARAMS: params}).items()},
              CONFIG: integrity.json_digest(config_dict),
              TOKENIZER: integrity.bytes_digest(tokenizer_bytes)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardSave({PARAMS: params}),
            CONFIG: ocp.args.JsonSave(config_dict), TOKENIZER: FileSave(tokenizer_bytes),
            INTEGRITY: ocp.args.JsonSave(checks)}))
    return path


class NotACheckpoint(FileNotFoundError):
    """A path that is not a workdir with checkpoints, a checkpoint step directory or an export."""


def resolve_params_source(source: str) -> tuple[str, str]:
    """(directory holding the items, name of the array item) for a run's workdir (its latest
    checkpoint), one of its step directories, or an export."""
    source = _abs(source)
    if os.path.isdir(os.path.join(source, "checkpoints")):
        manager = make_manager(source, async_save=False, read_only=True)
        step = manager.latest_step()
        manager.close()
        if step is None:
            raise NotACheckpoint(f"{source} is a workdir without checkpoints")
        source = os.path.join(source, "checkpoints", str(step))
    for item in (STATE, PARAMS):
        if os.path.isdir(os.path.join(source, item)):
            return source, item
    raise NotACheckpoint(
        f"{source}: not a workdir, a checkpoint step directory or an export (expected "
        f"'checkpoints/', '{STATE}/' or '{PARAMS}/' inside)")


def read_source(source: str) -> tuple[dict, bytes]:
    """(config dict, tokenizer bytes) saved with a workdir's latest checkpoint, a step
    directory or an export, checked against their checksums."""
    directory, _ = resolve_params_source(source)
    root = epath.Path(directory)
    checks = ocp.JsonCheckpointHandler().restore(root / INTEGRITY)
    config_dict = ocp.JsonCheckpointHandler().restore(root / CONFIG)
    tokenizer_bytes = (root / TOKENIZER / FileHandler.FILENAME).read_bytes()
    for item, ok in ((CONFIG, integrity.json_digest(config_dict) == checks[CONFIG]),
                     (TOKENIZER, integrity.bytes_digest(tokenizer_bytes) == checks[TOKENIZER])):
        if not ok:
            raise DamagedCheckpoint(-1, item, f"{directory}: content does not match its checksum")
    return dict(config_dict), tokenizer_bytes


def load_params(source: str, abstract_params, shardings) -> tuple[Any, dict, bytes]:
    """(params on `shardings`, config dict, tokenizer bytes) from a workdir, step dir or
    export, verified against the checksums written with it. The optimizer state is not read."""
    directory, item = resolve_params_source(source)
    root = epath.Path(directory)
    checks = ocp.JsonCheckpointHandler().restore(root / INTEGRITY)
    config_dict, tokenizer_bytes = read_source(directory)
    target = {PARAMS: _target(abstract_params, shardings)}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(root / item, args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # noqa: BLE001
        raise DamagedCheckpoint(-1, item, f"{directory}: {type(e).__name__}: {e}") from e
    expected = {k: v for k, v in checks[STATE].items() if k.startswith(PARAMS + "/")}
    bad = integrity.mismatches(expected, _state_checksums(restored))
    if bad:
        raise DamagedCheckpoint(-1, item, f"{directory}: {len(bad)} params do not match their "
                                f"checksums, or the model's params differ ({', '.join(bad[:3])})")
    return restored[PARAMS], config_dict, tokenizer_bytes


def read_params_to_host(source: str) -> tuple[Any, dict, bytes]:
    """Like `load_params` without knowing the model: the params as saved (numpy arrays on the
    host), for exports and inspection."""
    directory, item = resolve_params_source(source)
    root = epath.Path(directory)
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(root / item).item_metadata[PARAMS]
        target = {PARAMS: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta)}
        restore_args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = ckptr.restore(root / item, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    checks = ocp.JsonCheckpointHandler().restore(root / INTEGRITY)
    expected = {k: v for k, v in checks[STATE].items() if k.startswith(PARAMS + "/")}
    bad = integrity.mismatches(expected, _state_checksums(restored))
    if bad:
        raise DamagedCheckpoint(-1, item, f"{directory}: params do not match their checksums "
                                f"({', '.join(bad[:3])})")
    config_dict, tokenizer_bytes = read_source(directory)
    return restored[PARAMS], config_dict, tokenizer_bytes
