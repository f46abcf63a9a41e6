"""Train state pytree and its sharded creation (shapes from jax.eval_shape, never materialised
on one host)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from fmjax import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32[2] root key for dropout and objective noise (folded with step)


def init_params_fn(model, seq_len: int):
    """rng -> boxed params (nn.LogicallyPartitioned leaves)."""
    def init(rng):
        tokens_BT = jnp.zeros((1, seq_len), jnp.int32)
        return model.init({"params": rng}, tokens_BT)["params"]
    return init


def abstract_params(model, seq_len: int):
    """(ShapeDtypeStruct params, the same with their logical-axis boxes); allocates nothing."""
    init = init_params_fn(model, seq_len)
    # the key is made inside the trace: under a mesh of devices this host cannot address (a
    # TPU topology compiled ahead of time, fmjax/aot/compile.py) nothing may run eagerly
    boxed = jax.eval_shape(lambda: init(jax.random.PRNGKey(0)))
    abstract = jax.tree.map(lambda x: x.unbox(apply_constraint=False), boxed,
                            is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    return abstract, boxed


def param_shardings(model, seq_len: int, mesh):
    abstract, boxed = abstract_params(model, seq_len)
    return abstract, mesh_lib.tree_shardings(mesh, boxed)


def _keys(path) -> tuple[str, ...]:
    return tuple(jax.tree_util.keystr(path, simple=True, separator="/").split("/"))


def _opt_state_shardings(tx, abstract_params, params_sharding, mesh):
    """Optimizer leaves that mirror a param (Adam's mu/nu: the param's key path is a suffix of
    theirs, same shape) take its sharding; others (counts, Adafactor's factored moments) are
    replicated. Works through masked / multi-transform states, whose frozen leaves are absent."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    repl = NamedSharding(mesh, P())
    by_path = {}
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_shardings = jax.tree.leaves(params_sharding, is_leaf=lambda x: isinstance(x, NamedSharding))
    for (path, leaf), sharding in zip(flat_params, flat_shardings):
        by_path[_keys(path)] = (leaf.shape, sharding)

    def pick(path, leaf):
        keys = _keys(path)
        for start in range(len(keys)):
            shape, sharding = by_path.get(keys[start:], (None, None))
            if sharding is not None and shape == getattr(leaf, "shape", None):
                return sharding
        return repl

    return abstract_opt, jax.tree_util.tree_map_with_path(pick, abstract_opt)


def state_shardings(model, tx, seq_len: int, mesh) -> tuple[TrainState, TrainState]:
    """(abstract state, shardings), both TrainState-shaped."""
    abstract_params, p_shard = param_shardings(model, seq_len, mesh)
    abstract_opt, o_shard = _opt_state_shardings(tx, abstract_params, p_shard, mesh)
    repl = NamedSharding(mesh, P())
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                          opt_state=abstract_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    return abstract, TrainState(step=repl, params=p_shard, opt_state=o_shard, rng=repl)


def create_state(model, tx, seed: int, seq_len: int, mesh, shardings: TrainState) -> TrainState:
    """Initialises directly into `shardings`: each device computes only its own shards."""
    init_params = init_params_fn(model, seq_len)

    def init(seed_key):
        params_rng, state_rng = jax.random.split(seed_key)
        params = nn.unbox(init_params(params_rng))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=state_rng)

    with mesh_lib.activate(mesh):
        return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def count_params(abstract_params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(abstract_params)))
