"""A Hugging Face model directory read and written one tensor at a time.

Reading: config.json plus model.safetensors, or shards model-0000k-of-0000n.safetensors listed
by model.safetensors.index.json. Each tensor (or a slice of it along one axis) is read through
a memory map of its bytes and copied out, so host memory holds one tensor, not the model.

Writing: the header (names, dtypes, shapes, offsets) is known before any data, so tensors are
produced and appended one by one; shards are cut at `max_shard_bytes` with an index file.

Why not `safetensors.safe_open`: its numpy backend has no bfloat16 (the storage dtype of most
Llama checkpoints) and `safetensors.numpy.save_file` needs every tensor in memory at once. The
format itself is small (https://github.com/huggingface/safetensors#format): an 8-byte
little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data.
tests/test_convert.py checks this reader against safe_open and this writer against
transformers' from_pretrained.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

if sys.byteorder != "little":  # safetensors data are little-endian; reads and writes here are raw
    raise ImportError("fmjax.hf.safetensors_io needs a little-endian host")

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
          "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
          "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
          "BOOL": np.dtype("bool")}
NAMES = {v: k for k, v in DTYPES.items()}


class HFFormatError(ValueError):
    """A Hugging Face directory or file this reader cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(path: str) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise HFFormatError(f"{path}: not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", raw)
        if length > os.path.getsize(path):
            raise HFFormatError(f"{path}: not a safetensors file (header length {length})")
        header = json.loads(f.read(length))
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in DTYPES:
            raise HFFormatError(f"{path}: tensor {name} has dtype {entry['dtype']}, which fmjax "
                                f"does not read (known: {', '.join(DTYPES)})")
        begin, end = entry["data_offsets"]
        info = TensorInfo(path, DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + length + begin)
        if info.nbytes != end - begin:
            raise HFFormatError(f"{path}: tensor {name}: {end - begin} bytes for shape "
                                f"{info.shape} {entry['dtype']}")
        out[name] = info
    return out


class HFDir:
    """A local Hugging Face model directory: `config` (config.json) and its tensors by name."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        config_path = os.path.join(self.path, CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"--hf_dir={path}: no {CONFIG_FILE}; point it at a local "
                                    "Hugging Face model directory (save_pretrained output)")
        with open(config_path) as f:
            self.config = json.load(f)
        self.tensors: dict[str, TensorInfo] = {}
        for file in self._files():
            for name, info in read_header(file).items():
                if name in self.tensors:
                    raise HFFormatError(f"tensor {name} is in both {self.tensors[name].file} "
                                        f"and {file}")
                self.tensors[name] = info

    def _files(self) -> list[str]:
        index = os.path.join(self.path, INDEX_FILE)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            return [os.path.join(self.path, name) for name in sorted(set(weight_map.values()))]
        single = os.path.join(self.path, SINGLE_FILE)
        if os.path.isfile(single):
            return [single]
        present = sorted(os.listdir(self.path))
        hint = (" (PyTorch .bin weights: re-save them with save_pretrained(..., "
                "safe_serialization=True))" if any(p.endswith(".bin") for p in present) else "")
        raise FileNotFoundError(f"{self.path}: neither {SINGLE_FILE} nor {INDEX_FILE}{hint}; "
                                f"found {present}")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def read(self, name: str, axis: int = 0, start: int | None = None,
             stop: int | None = None) -> np.ndarray:
        """The tensor `name` (a copy), or its [start:stop] slice along `axis`."""
        info = self.tensors[name]
        if not info.shape:
            data = np.fromfile(info.file, info.dtype, count=1, offset=info.offset)
            return data.reshape(())
        mm = np.memmap(info.file, info.dtype, mode="r", offset=info.offset, shape=info.shape)
        index = [slice(None)] * len(info.shape)
        index[axis] = slice(start, stop)
        out = np.array(mm[tuple(index)])
        del mm
        return out


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor to write: its name, dtype, shape, and a function producing its values."""
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_file(path: str, specs: Iterable[TensorSpec], metadata: dict | None = None) -> None:
    """One safetensors file, the tensors in the order given, produced one at a time."""
    specs = list(specs)
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for spec in specs:
        header[spec.name] = {"dtype": NAMES[np.dtype(spec.dtype)], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-(8 + len(blob)) % 8)  # data starts 8-byte aligned, as safetensors writes it
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for spec in specs:
            value = np.ascontiguousarray(spec.produce())
            if value.shape != tuple(spec.shape) or value.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{spec.name}: produced {value.shape} {value.dtype}, declared "
                                 f"{spec.shape} {np.dtype(spec.dtype)}")
            f.write(value.reshape(-1).view(np.uint8).data)  # no copy; hosts are little-endian
            del value
    os.replace(tmp, path)


def write_model(directory: str, specs: list[TensorSpec], *,
                max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """model.safetensors, or shards of at most `max_shard_bytes` (a larger tensor gets a shard
    of its own) with model.safetensors.index.json, as save_pretrained writes them. Returns
    the files written."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        write_file(os.path.join(directory, SINGLE_FILE), shards[0], meta)
        return [SINGLE_FILE]
    names = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        write_file(os.path.join(directory, name), shard, meta)
        weight_map.update({spec.name: name for spec in shard})
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names + [INDEX_FILE]
