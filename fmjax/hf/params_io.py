"""fmjax params-only checkpoints (the layout `checkpoint.export_params` writes and
`checkpoint.load_params` reads) written and read one leaf, or one block of a stacked leaf,
at a time.

Writing: `checkpoint.export_params` hands orbax the whole tree, and orbax's numpy handler
copies every leaf again before writing (2-3x the model in host memory). Here each leaf is a
`LazyLeaf` (shape, dtype and a function producing block i), saved by `LazyLeafHandler`, an
orbax TypeHandler that opens the leaf's tensorstore array exactly as orbax's NumpyHandler
would and writes the blocks one after another (a scanned leaf is chunked one block per chunk,
so a block is written without reading the others back). The checkpoint on disk is the same
(value type np.ndarray); `checkpoint.load_params` / `read_params_to_host` read it unchanged.
The integrity item needs every leaf's checksum before the single atomic orbax save, so the
blocks are produced twice: once for the checksums, once for the write.

Reading: `LeafReader` reads one leaf, or one block of a stacked leaf, at a time (tensorstore
reads of the arrays orbax wrote, addressed as orbax names them) and checks every leaf against
the checksum saved with it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from fmjax.training import checkpoint, integrity


@dataclasses.dataclass(frozen=True, eq=False)
class LazyLeaf:
    """An array produced on demand: `load(i)` is block i ([shape[1:]]) of a stacked leaf
    (a scanned layer stack: shape[0] blocks) or, unstacked, the whole array (i = 0)."""
    shape: tuple[int, ...]
    dtype: np.dtype
    stacked: bool
    load: Callable[[int], np.ndarray]

    @property
    def blocks(self) -> int:
        return self.shape[0] if self.stacked else 1

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def block(self, i: int) -> np.ndarray:
        value = np.asarray(self.load(i))
        expected = self.shape[1:] if self.stacked else self.shape
        if value.shape != tuple(expected) or value.dtype != np.dtype(self.dtype):
            raise ValueError(f"LazyLeaf block {i}: {value.shape} {value.dtype}, expected "
                             f"{tuple(expected)} {np.dtype(self.dtype)}")
        return value

    def checksum(self) -> str:
        digest = integrity.LeafChecksum()
        for i in range(self.blocks):
            digest.update(self.block(i))
        return digest.hexdigest()


class LazyLeafHandler(ocp.type_handlers.NumpyHandler):
    """Saves LazyLeaf values block by block; restores like NumpyHandler (same typestr)."""

    def __init__(self):
        super().__init__(deepcopy_host_arrays=False)

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.type_handlers.SaveArgs()] * len(values)
        for value, info, arg in zip(values, infos, args):  # one leaf at a time, in order
            await info.await_path_creation()
            if jax.process_index() != 0:
                continue
            stacked = value.stacked
            chunk = (1, *value.shape[1:]) if stacked else value.shape
            tspec = ocp.type_handlers.get_json_tspec_write(
                info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=value.shape,
                local_shape=chunk, dtype=np.dtype(value.dtype),
                process_index=jax.process_index() if info.is_ocdbt_checkpoint else None, arg=arg)
            array = await ts.open(ts.Spec(tspec), create=True, open=True, context=info.ts_context)
            for i in range(value.blocks):
                target = array[i] if stacked else array
                await target.write(value.block(i))
        return []  # every write above has completed


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    types = ocp.type_handlers.create_type_handler_registry(
        (LazyLeaf, LazyLeafHandler()), (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, ocp.type_handlers.ArrayHandler()))
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(checkpoint.PARAMS, ocp.args.PyTreeSave,
                 ocp.PyTreeCheckpointHandler(type_handler_registry=types))
    registry.add(checkpoint.CONFIG, ocp.args.JsonSave, ocp.JsonCheckpointHandler())
    registry.add(checkpoint.INTEGRITY, ocp.args.JsonSave, ocp.JsonCheckpointHandler())
    registry.add(checkpoint.TOKENIZER, checkpoint.FileSave, checkpoint.FileHandler())
    return registry


def export_lazy(path: str, leaves: dict, config_dict: dict, tokenizer_bytes: bytes, *,
                log=lambda msg: None) -> str:
    """`checkpoint.export_params(path, leaves, ...)` for a tree of LazyLeaf: the same
    checkpoint, with host memory near one block instead of the whole tree."""
    path = os.path.abspath(os.path.expanduser(path))
    flat = jax.tree_util.tree_flatten_with_path({checkpoint.PARAMS: leaves})[0]
    sums = {}
    for n, (key, leaf) in enumerate(flat):
        name = jax.tree_util.keystr(key, simple=True, separator="/")
        sums[name] = leaf.checksum()
        log(f"checksummed {n + 1}/{len(flat)}: {name} {leaf.shape}")
    checks = {checkpoint.STATE: sums, checkpoint.CONFIG: integrity.json_digest(config_dict),
              checkpoint.TOKENIZER: integrity.bytes_digest(tokenizer_bytes)}
    handler = ocp.CompositeCheckpointHandler(handler_registry=_handler_registry())
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(path, args=ocp.args.Composite(**{
            checkpoint.PARAMS: ocp.args.PyTreeSave({checkpoint.PARAMS: leaves}),
            checkpoint.CONFIG: ocp.args.JsonSave(config_dict),
            checkpoint.TOKENIZER: checkpoint.FileSave(tokenizer_bytes),
            checkpoint.INTEGRITY: ocp.args.JsonSave(checks)}))
    return path


class LeafReader:
    """The params of a workdir / step directory / export, read one leaf, or one block of a
    stacked leaf, at a time (tensorstore reads of the arrays orbax wrote), and checked against
    the checksums saved with them (`verify`)."""

    def __init__(self, source: str):
        self.directory, self.item = checkpoint.resolve_params_source(source)
        self.config_dict, self.tokenizer_bytes = checkpoint.read_source(self.directory)
        root = epath.Path(self.directory)
        self._path = root / self.item
        self._checks = ocp.JsonCheckpointHandler().restore(root / checkpoint.INTEGRITY)[
            checkpoint.STATE]
        with ocp.PyTreeCheckpointer() as ckptr:
            meta = ckptr.metadata(self._path).item_metadata
        self._zarr3 = bool(meta.use_zarr3)
        tree = {checkpoint.PARAMS: meta[checkpoint.PARAMS]}
        flat = jax.tree_util.tree_flatten_with_path(tree[checkpoint.PARAMS])[0]
        names = jax.tree.leaves(ocp.tree.get_param_names(tree))  # orbax's array names
        self.shapes, self.dtypes, self._names = {}, {}, {}
        for (key, m), name in zip(flat, names):
            path = jax.tree_util.keystr(key, simple=True, separator="/")
            self.shapes[path], self.dtypes[path] = tuple(m.shape), np.dtype(m.dtype)
            self._names[path] = name
        self._ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(self._path)
        self._context = ocp.type_handlers.get_ts_context(use_ocdbt=self._ocdbt)
        self._stores: dict[str, ts.TensorStore] = {}
        self._digests: dict[str, tuple[int, integrity.LeafChecksum]] = {}

    def _store(self, path: str) -> ts.TensorStore:
        if path not in self._stores:
            info = ocp.type_handlers.ParamInfo(
                name=self._names[path], parent_dir=self._path,
                is_ocdbt_checkpoint=self._ocdbt, use_zarr3=self._zarr3)
            spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._ocdbt)
            self._stores[path] = ts.open(ts.Spec(spec), open=True,
                                         context=self._context).result()
        return self._stores[path]

    def read(self, path: str, block: int | None = None) -> np.ndarray:
        """The leaf at `path` ("embed/embedding"), or block `block` of its leading axis."""
        store = self._store(path)
        value = np.asarray((store if block is None else store[block]).read().result())
        done, digest = self._digests.get(path, (0, integrity.LeafChecksum()))
        if done == (0 if block is None else block):  # read whole, or blocks in order
            digest.update(value)
            done = -1 if block is None or block + 1 == self.shapes[path][0] else block + 1
            self._digests[path] = (done, digest)  # -1: the whole leaf is digested
        return value

    def verify(self) -> None:
        """Raises DamagedCheckpoint unless every leaf matches its saved checksum (leaves not
        read whole or block by block in order are read again, block by block)."""
        for path, shape in self.shapes.items():
            done, digest = self._digests.get(path, (0, None))
            if done != -1:
                digest = integrity.LeafChecksum()
                for i in range(shape[0]) if shape else (None,):
                    store = self._store(path)
                    digest.update(np.asarray((store if i is None else store[i]).read().result()))
            name = f"{checkpoint.PARAMS}/{path}"
            if digest.hexdigest() != self._checks.get(name):
                raise checkpoint.DamagedCheckpoint(
                    -1, self.item, f"{self.directory}: {name} does not match its checksum")
