"""LoRA (Hu et al. 2021, arXiv:2106.09685) in parameter space, for any model built from
fmjax.nn.layers.Dense: no layer changes, the adapters are folded into the kernels before
`model.apply`.

For each targeted kernel W (a Dense module whose name is in config.lora.targets):

    W_eff = W + (alpha / rank) * A @ B        (in W's matrix view, below)

W is frozen; only A and B train. Matrix view of a kernel with logical axes `names`: a leading
`layers` axis (scanned stacks) is a batch axis; then if the last axis is `embed` the output dims
are (embed,) and the input dims are the rest (attention `out` [heads, head_dim, embed], MLP
`down` [mlp, embed]); otherwise the input dims are the first axis and the output dims the rest
(`query`/`key`/`value` [embed, heads, head_dim], `up`/`gate` [embed, mlp]).

    A: [(layers,) *in_dims, rank]   ~ N(0, 1 / in_features)   axes (layers?, *in_axes, None)
    B: [(layers,) rank, *out_dims]  = 0                        axes (layers?, None, *out_axes)

A's std 1/sqrt(in_features) keeps x @ A at the scale of x (unit-variance normalised inputs give
unit-variance rank features), so the scale of B's gradient does not depend on the width;
scale = alpha / rank as in the paper. B = 0 makes A @ B exactly 0, so at init W_eff == W
bitwise (W + 0.0 == W for every W but -0.0, which becomes +0.0: equal under ==).

A quantized kernel (integers + `kernel_scale`, fmjax/quantization/: the frozen base of QLoRA,
Dettmers et al. 2023, arXiv:2305.14314) cannot take a float sum: its adapters go beside it
instead, as `kernel_lora_a` = A and `kernel_lora_b` = (alpha / rank) B, and the weights hook
(fmjax.quantization.weights.weight) adds `low_rank_delta` to the kernel it dequantizes, inside
each layer. So no float copy of the stacked base is ever formed, and a params tree with these
siblings is itself a loadable quantized model (a QLoRA run's best/ export).

Adapters mirror the params tree down to the module: the kernel at
`.../attn/query/kernel` has its adapter at `.../attn/query/{lora_a, lora_b}`. Keep them beside
the params as {"model": params, "lora": adapters}; `trainable_mask` + `masked_optimizer` give
an optimizer that keeps no state for (and never updates) the frozen params.

Cost note: the backward pass still forms dL/dW_eff (a full-size weight gradient) to get dA and
dB, so compute is that of full fine-tuning; the saving is optimizer state and update traffic.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fmjax.config import ConfigError, base_config, did_you_mean

A_KEY, B_KEY = "lora_a", "lora_b"
# beside a quantized `kernel`: A, and B already times alpha / rank (module docstring)
A_SIBLING, B_SIBLING = "kernel_" + A_KEY, "kernel_" + B_KEY
MODEL_KEY, LORA_KEY = "model", "lora"  # the state's params: {MODEL_KEY: params, LORA_KEY: adapters}

Path = tuple[str, ...]


def _items(tree, prefix: Path = ()):
    """(path, leaf) for a nested-mapping tree; boxes (nn.LogicallyPartitioned) are leaves."""
    for key, value in tree.items():
        path = prefix + (key,)
        if isinstance(value, Mapping):
            yield from _items(value, path)
        else:
            yield path, value


def _get(tree, path: Path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: Path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """"query,value" or ("query", "value") -> ("query", "value")."""
    if isinstance(targets, str):
        targets = targets.split(",")
    return tuple(t.strip() for t in targets if t.strip())


def target_paths(params, targets: str | Sequence[str]) -> list[Path]:
    """Paths of every `kernel` whose module name is in `targets`, anywhere in the tree (boxed or
    not). A name that matches nothing raises ConfigError naming config.lora.targets, except the
    names of the default config.lora.targets, which covers every family (GPT-2 has no `gate`)."""
    targets = parse_targets(targets)
    kernels = [path for path, _ in _items(params) if len(path) >= 2 and path[-1] == "kernel"]
    modules = sorted({path[-2] for path in kernels})
    defaults = parse_targets(base_config().lora.targets)
    unknown = [t for t in targets if t not in modules and t not in defaults]
    if unknown or not any(t in modules for t in targets):
        what = f"no module named {unknown[0]!r} has a kernel" if unknown else "matches no kernel"
        raise ConfigError(
            f"config.lora.targets = {','.join(targets)!r}: {what}; use a comma-separated subset "
            f"of the modules with kernels: {modules}."
            f"{did_you_mean(unknown[0], modules) if unknown else ''}")
    return [path for path in kernels if path[-2] in targets]


def _matrix_view(names: Sequence[str | None], shape, path: Path) -> tuple[int, int]:
    """(1 if a leading `layers` axis else 0, number of input dims) of a kernel; see module doc."""
    names = tuple(names)
    lead = 1 if names and names[0] == "layers" else 0
    axes = names[lead:]
    if len(axes) < 2 or len(names) != len(shape):
        raise ValueError(f"LoRA kernel {'/'.join(path)} has axes {names} and shape {shape}: "
                         "need an input and an output axis; drop it from config.lora.targets")
    return lead, (len(axes) - 1 if axes[-1] == "embed" else 1)


def init_adapters(params, rank: int, targets: str | Sequence[str], rng) -> dict:
    """Boxed adapters {..., module: {lora_a, lora_b}} (nn.LogicallyPartitioned leaves, so
    mesh.tree_shardings shards them) for the targeted kernels of BOXED params (model.init's
    output before nn.unbox, or its jax.eval_shape). Each A draws from rng folded with a hash of
    its path, so adding a target never changes the others. See `abstract_adapters`."""
    if rank <= 0:
        raise ConfigError(f"config.lora.rank = {rank}: adapters need rank >= 1 (0 means full "
                          "fine-tuning without adapters); set --config.lora.rank=8, say")
    adapters: dict = {}
    for path in target_paths(params, targets):
        box = _get(params, path)
        if not isinstance(box, nn.LogicallyPartitioned):
            raise TypeError(f"init_adapters: kernel {'/'.join(path)} carries no logical axes; "
                            "pass model.init(...)['params'] before nn.unbox (or its eval_shape)")
        w = box.value
        lead, n_in = _matrix_view(box.names, w.shape, path)
        in_end = lead + n_in
        in_shape = w.shape[lead:in_end]
        key = jax.random.fold_in(rng, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)
        std = 1.0 / math.sqrt(math.prod(in_shape))
        # a quantized (integer) kernel's adapters train in float32
        dtype = w.dtype if jnp.issubdtype(w.dtype, jnp.floating) else jnp.float32
        a = jax.random.normal(key, (*w.shape[:in_end], rank), dtype) * jnp.asarray(std, dtype)
        b = jnp.zeros((*w.shape[:lead], rank, *w.shape[in_end:]), dtype)
        names = tuple(box.names)
        _set(adapters, path[:-1] + (A_KEY,), box.replace(value=a, names=(*names[:in_end], None)))
        _set(adapters, path[:-1] + (B_KEY,),
             box.replace(value=b, names=(*names[:lead], None, *names[in_end:])))
    return adapters


def abstract_adapters(params, rank: int, targets: str | Sequence[str]) -> dict:
    """init_adapters as boxed ShapeDtypeStructs (allocates nothing), for shardings/restore."""
    return jax.eval_shape(lambda rng: init_adapters(params, rank, targets, rng),
                          jax.random.PRNGKey(0))


def _check_shapes(w_shape, a, b, rank: int, path: Path) -> int:
    """The number of leading batch (layers) axes of kernel `w_shape`'s adapters `a`, `b`;
    ValueError when they do not fit it."""
    lead = a.ndim + b.ndim - 2 - len(w_shape)  # 1 with a leading layers axis, else 0
    in_end = a.ndim - 1
    expected_a = (*w_shape[:in_end], rank)
    expected_b = (*w_shape[:lead], rank, *w_shape[in_end:])
    if lead not in (0, 1) or a.shape != expected_a or b.shape != expected_b:
        raise ValueError(f"LoRA adapters at {'/'.join(path)}: lora_a {a.shape} and lora_b "
                         f"{b.shape} do not fit kernel {tuple(w_shape)} with rank {rank} "
                         f"(expected {expected_a} and {expected_b}); check config.lora.rank")
    return lead


def _effective_kernel(w, a, b, scale: float, rank: int, path: Path):
    lead = _check_shapes(w.shape, a, b, rank, path)
    compute = jnp.promote_types(w.dtype, jnp.float32)
    delta = low_rank_delta(a.astype(compute), b.astype(compute), lead)
    return (w.astype(compute) + scale * delta).astype(w.dtype)


def low_rank_delta(a, b, lead: int = 0):
    """A @ B in the kernel's shape: a [*batch, *in_dims, rank] and b [*batch, rank, *out_dims]
    (`lead` batch axes: a scanned stack's layers) -> [*batch, *in_dims, *out_dims]."""
    batch, in_dims, out_dims = a.shape[:lead], a.shape[lead:-1], b.shape[lead + 1:]
    rank = a.shape[-1]
    a_LIR = a.reshape(*batch, math.prod(in_dims), rank)
    b_LRO = b.reshape(*batch, rank, math.prod(out_dims))
    return jnp.matmul(a_LIR, b_LRO, precision=jax.lax.Precision.HIGHEST).reshape(
        *batch, *in_dims, *out_dims)


def _fold(params, adapters, scale: float, rank: int, path: Path):
    out = dict(params)
    for key, sub in adapters.items():
        if key in (A_KEY, B_KEY):
            continue
        if key not in params:
            raise KeyError(f"LoRA adapters at {'/'.join(path + (key,))} have no params there; "
                           "were they made for another model?")
        out[key] = _fold(params[key], sub, scale, rank, path + (key,))
    if A_KEY in adapters:
        w, a, b = params["kernel"], adapters[A_KEY], adapters[B_KEY]
        if jnp.issubdtype(w.dtype, jnp.integer):  # quantized: beside it (module docstring)
            _check_shapes(w.shape, a, b, rank, path)
            out[A_SIBLING], out[B_SIBLING] = a, (b * jnp.asarray(scale, b.dtype))
        else:
            out["kernel"] = _effective_kernel(w, a, b, scale, rank, path)
    return out


def place_beside(params, adapters):
    """`params` (nested dicts) with each adapter pair of `adapters` (init_adapters' layout) put
    beside its kernel as A_SIBLING, B_SIBLING, as given (boxed or abstract): the tree a QLoRA
    export stores (B there is already times alpha / rank, which leaves shapes and axes alone)."""
    out = dict(params)
    for key, sub in adapters.items():
        if key not in (A_KEY, B_KEY):
            out[key] = place_beside(params[key], sub)
    if A_KEY in adapters:
        out[A_SIBLING], out[B_SIBLING] = adapters[A_KEY], adapters[B_KEY]
    return out


def apply(params, adapters, alpha: float, rank: int):
    """Effective params (unboxed): every adapted kernel W -> W + (alpha / rank) A @ B, every
    other leaf the same object. Pure and jittable; differentiate wrt adapters to train them."""
    return _fold(params, adapters, alpha / rank, rank, ())


def merge(params, adapters, alpha: float, rank: int):
    """Params with the adapters folded in, for export: a plain checkpoint of the base model's
    shape that needs no LoRA code to load (the same arithmetic as `apply`)."""
    return apply(params, adapters, alpha, rank)


def trainable_mask(state_params, train_prefixes: Sequence[str] = ()):
    """Bool tree over {"model": params, "lora": adapters}: True for every adapter and for model
    leaves under one of `train_prefixes` ('/'-joined paths in the model tree, e.g. "head" for
    models/classifier.py), False elsewhere (the frozen base)."""
    if not isinstance(state_params, Mapping) or set(state_params) != {MODEL_KEY, LORA_KEY}:
        keys = sorted(state_params) if isinstance(state_params, Mapping) else state_params
        raise ValueError(f"trainable_mask expects {{{MODEL_KEY!r}: params, {LORA_KEY!r}: "
                         f"adapters}}, got keys {keys}")
    prefixes = [tuple(p.split("/")) for p in train_prefixes]
    model_paths = [path for path, _ in _items(state_params[MODEL_KEY])]
    for prefix in prefixes:
        if not any(path[:len(prefix)] == prefix for path in model_paths):
            top = sorted(state_params[MODEL_KEY])
            raise ValueError(f"train prefix {'/'.join(prefix)!r} matches no model param; the "
                             f"model's top-level modules are {top}")

    def trainable(path, _):
        keys = tuple(getattr(k, "key", k) for k in path)
        return keys[0] == LORA_KEY or any(keys[1:1 + len(p)] == p for p in prefixes)

    return jax.tree_util.tree_map_with_path(
        trainable, state_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def masked_optimizer(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
    """`tx` on the leaves where `mask` is True; zero updates and NO optimizer state elsewhere."""
    labels = jax.tree.map(lambda trainable: "train" if trainable else "frozen", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


class LoraModel:
    """A Linen model with adapters, used wherever the model is: `init` returns
    {"params": {"model": boxed params, "lora": boxed adapters}} and `apply` folds the adapters
    into the kernels (`apply` above) before calling the wrapped model. Attributes not defined
    here (cfg, supports_hidden_output, ...) are the wrapped model's."""

    def __init__(self, model, lora_config):
        self.model = model
        self.rank, self.alpha = int(lora_config.rank), float(lora_config.alpha)
        self.targets = parse_targets(lora_config.targets)

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def init(self, rngs, *args, **kwargs):
        variables = dict(self.model.init(rngs, *args, **kwargs))
        params = variables["params"]
        rng = jax.random.fold_in(rngs["params"], 0x10AA)
        adapters = init_adapters(params, self.rank, self.targets, rng)
        return {**variables, "params": {MODEL_KEY: params, LORA_KEY: adapters}}

    def apply(self, variables, *args, **kwargs):
        state_params = variables["params"]
        params = apply(state_params[MODEL_KEY], state_params[LORA_KEY], self.alpha, self.rank)
        return self.model.apply({**variables, "params": params}, *args, **kwargs)


def merge_state_params(state_params, lora_config):
    """{"model": params, "lora": adapters} -> the model's params with the adapters folded in."""
    return merge(state_params[MODEL_KEY], state_params[LORA_KEY], float(lora_config["alpha"]),
                 int(lora_config["rank"]))
