"""Device mesh from the config, the ONE table of logical-axis rules, and sharding helpers.

Every parameter and activation is named with logical axes (`batch`, `embed`, `heads`, ...);
`LOGICAL_RULES` maps them onto the mesh axes `data`, `fsdp`, `expert`, `context`, `tensor` (the
axes and their config.mesh defaults: config.MESH_AXES). Changing the parallelism strategy means
editing this table, nothing else.
"""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fmjax.config import BATCH_MESH_AXES, MESH_AXIS_NAMES as MESH_AXES

# logical axis -> mesh axes. A mesh axis already used by an earlier dimension of the same
# array is skipped (flax semantics), so activations ('batch', 'length', 'embed') shard batch
# over (data, fsdp, expert), length over context and leave embed whole, while weights
# ('embed', 'mlp') shard embed over fsdp. MoE expert weights ('experts', 'embed', 'mlp') split their experts over `expert`;
# its mesh axes must be among the batch's (fmjax/nn/moe.py gathers an expert group's tokens).
LOGICAL_RULES = (
    ("batch", BATCH_MESH_AXES),
    ("experts", "expert"),
    ("length", "context"),  # context parallelism: fmjax/nn/context_parallel.py
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("positions", None),
    ("token_types", None),  # BERT's token-type table (2 rows)
    ("relative_buckets", None),  # T5's relative-position bias table [buckets, heads]
)


def mesh_shape(config, num_devices: int, num_processes: int | None = None) -> dict[str, int]:
    """Axis sizes with -1 resolved, for `num_processes` (None = this run's); validation (with
    the fix in the message) is in config.py."""
    from fmjax import config as config_lib
    return config_lib.validate(config, num_devices=num_devices,
                               num_processes=num_processes or jax.process_count())


def make_mesh(config, devices=None, num_processes: int | None = None) -> Mesh:
    """The (data, fsdp, expert, context, tensor) mesh over `devices` (default: all), laid on the chip grid by
    jax.make_mesh. Devices of several TPU slices (multislice; each device's `slice_index`) get
    a hybrid mesh: the slices stack along mesh.data (or mesh.fsdp when data is 1), so only
    that axis crosses the data-center network between slices, the others stay on each slice's
    own links."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_shape(config, len(devices), num_processes)
    shape = tuple(sizes[a] for a in MESH_AXES)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:
        return Mesh(_multislice_grid(sizes, devices, slices), MESH_AXES, axis_types=axis_types)
    if devices == list(jax.devices()) or devices[0].platform != "cpu":
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def _multislice_grid(sizes: dict[str, int], devices, slices: int) -> np.ndarray:
    from jax.experimental import mesh_utils
    from fmjax.config import ConfigError
    axis = next((a for a in ("data", "fsdp") if sizes[a] % slices == 0), None)
    if axis is None:
        raise ConfigError(f"config.mesh = {sizes}: the devices span {slices} TPU slices, and "
                          f"mesh.data or mesh.fsdp must be a multiple of {slices} (the axis "
                          f"that crosses the network between slices); e.g. "
                          f"--config.mesh.data={slices} --config.mesh.fsdp=-1")
    dcn = tuple(slices if a == axis else 1 for a in MESH_AXES)
    ici = tuple(sizes[a] // d for a, d in zip(MESH_AXES, dcn))
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)


@contextlib.contextmanager
def activate(mesh: Mesh):
    """Mesh and logical rules in scope, for tracing models with logical constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield


def logical_sharding(mesh: Mesh, logical_axes) -> NamedSharding:
    spec = nn.logical_to_mesh_axes(logical_axes, LOGICAL_RULES)
    return NamedSharding(mesh, spec)


def tree_shardings(mesh: Mesh, boxed_tree):
    """NamedShardings for a tree whose leaves may be nn.LogicallyPartitioned boxes."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch array ([B], [B, T], ...): rows over (data, fsdp), the rest whole."""
    return logical_sharding(mesh, ("batch",))


def mesh_axes_of(logical: str, mesh=None) -> tuple[str, ...]:
    """The mesh axes LOGICAL_RULES gives `logical` that `mesh` (default: the current abstract
    mesh) has, in rule order; () when none."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    axes = dict(LOGICAL_RULES)[logical]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return tuple(a for a in axes if a in mesh.axis_names)


def shard_attention(local, heads: tuple, rows: tuple = ()):
    """local(*heads, *rows) -> out [B, T, H, K], run on each device's shard. `heads` are laid
    out [B, T, H, ...] (q, k, v; or q, k, v stacked [B, T, H, 3, K]): the batch and the heads
    split over the mesh axes LOGICAL_RULES gives 'batch' and 'heads'; `rows` (masks, segment
    ids: batch first) split over the batch only. For attention kernels that XLA cannot
    partition (fmjax/kernels/cpu/attention.py, fmjax/kernels/tpu/splash_attention.py). A dimension the mesh axes
    do not divide stays whole (the batch of 1 that initialisation traces, fewer heads than
    the tensor axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return local(*heads, *rows)

    def along(logical: str, size: int):  # LOGICAL_RULES' mesh axes, if they divide `size`
        axes = dict(LOGICAL_RULES)[logical]
        axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes or ())
                     if a in mesh.axis_names)
        return axes if axes and size % int(np.prod([mesh.shape[a] for a in axes])) == 0 else None

    b, _, h = heads[0].shape[:3]
    batch, tensor = along("batch", b), along("heads", h)
    in_specs = (tuple(P(batch, None, tensor, *[None] * (x.ndim - 3)) for x in heads)
                + tuple(P(batch, *[None] * (x.ndim - 1)) for x in rows))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(batch, None, tensor),
                         check_vma=False)(*heads, *rows)
