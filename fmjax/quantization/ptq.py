"""Post-training quantization of a checkpoint (`python -m fmjax.quantize`): read a run's latest
checkpoint, a step directory or an export; fold LoRA adapters in (as fmjax.export does);
quantize every weight the model reads through fmjax.quantization.weights on the mesh of all
local devices, each leaf where its float shards are; write a quantized export (loaders put
each integer weight on its float weight's sharding, the scales on its output channels'). A
classification fine-tune's checkpoint is its classifier (models/classifier.py), head included."""
from __future__ import annotations

import dataclasses
import os

from etils import epath
import jax
import orbax.checkpoint as ocp

from fmjax import config as config_lib, mesh as mesh_lib
from fmjax.models import classifier
from fmjax.nn import lora
from fmjax.quantization import checkpoint_io, guard, integer_params, schemes, weights
from fmjax.training import checkpoint


@dataclasses.dataclass
class Result:
    path: str
    scheme: str
    group_size: int  # 0 = per output channel
    weights: int  # quantized weights (Dense kernels and embedding tables)
    quantized_params: int  # elements stored as integers
    scales: int  # float32 scales beside them
    float_params: int  # elements left in float (norms, biases, T5's position bias)
    bytes_on_disk: int  # of the written checkpoint's params


def saved_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """{"a/b/kernel": shape} of the params saved in a step directory or export (their metadata;
    no array is read)."""
    directory, item = checkpoint.resolve_params_source(directory)
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(epath.Path(directory) / item).item_metadata[checkpoint.PARAMS]
    return {integer_params.leaf_key(p): tuple(m.shape)
            for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)


def quantize_checkpoint(source: str, output: str, scheme_name: str,
                        group_size: int = 128) -> Result:
    """Writes the quantized export of `source` to the new directory `output`. group_size is
    used by grouped schemes (int4) only. Raises ConfigError (bad scheme or group size, a
    source that is quantized already), NotACheckpoint, FileExistsError."""
    scheme = schemes.get(scheme_name)
    group_size = group_size if scheme.grouped else 0
    output = os.path.abspath(os.path.expanduser(output))
    if os.path.exists(output):
        raise FileExistsError(f"--output={output} exists; choose a new directory")
    directory, _ = checkpoint.resolve_params_source(source)
    config_dict, tokenizer_bytes = checkpoint.read_source(directory)
    guard.refuse(config_dict, path=source, field="--checkpoint", tool="fmjax.quantize",
                 fix="quantize the float checkpoint it was made from ({source})")
    config = config_lib.from_json_dict(config_dict)
    config.lora.rank = 0  # the adapters are folded into the kernels below
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    model, cfg = classifier.build_saved(config, saved_shapes(directory))  # a fine-tune's head too
    mesh = mesh_lib.make_mesh(config)
    layouts, boxed = integer_params.layouts(model, cfg.seq_len, mesh)
    integer_params.check(layouts, scheme, group_size)  # before any weight is read

    params, config_dict, _ = checkpoint.read_params_to_host(directory)
    if config_dict.get("lora", {}).get("rank", 0) > 0:
        params = lora.merge_state_params(params, config_dict["lora"])
        config_dict = {**config_dict, "lora": {**config_dict["lora"], "rank": 0}}
    params = jax.device_put(params, mesh_lib.tree_shardings(mesh, boxed))
    with mesh_lib.activate(mesh):
        qparams = integer_params.quantize_params(params, layouts, scheme, group_size)
    # written from the host, as fmjax.export writes: orbax lays out an array replicated over
    # several devices in more, less compressible pieces (measured on 8 CPU devices: int4
    # params 256 KB from the devices vs 113 KB from numpy, the same values)
    qparams = jax.device_get(qparams)
    marked = guard.mark(config_dict, scheme=scheme.name, group_size=group_size,
                        weights=len(layouts), source=os.path.abspath(directory))
    checkpoint_io.write(output, qparams, marked, tokenizer_bytes)
    sizes = {k: x.size for k, x in _flat(qparams).items()}
    n_int = sum(sizes[k] for k in layouts)
    n_scale = sum(sizes[k + weights.SCALE_SUFFIX] for k in layouts)
    return Result(output, scheme.name, group_size, len(layouts), n_int, n_scale,
                  sum(sizes.values()) - n_int - n_scale,
                  directory_bytes(os.path.join(output, checkpoint.PARAMS)))


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
