"""Mixture-of-experts MLP: a router picks `top_k` of `num_experts` MLPs per token (Mixtral,
Qwen-MoE, DeepSeek-MoE with shared experts; Switch with top-1), with expert parallelism.

Shapes: B batch, T length, D model, E experts (El: on this device), K top_k, F expert hidden,
N tokens (B x T, or an expert group's), A assignments (N x K).

Dispatch (`expert_ffn`): every (token, expert) assignment is sorted by expert and the experts
run as grouped matmuls over the sorted rows (`grouped_matmul`: jax.lax.ragged_dot, or on TPU
the megablox kernel, fmjax/kernels/tpu/megablox.py; no padding to a capacity:
dropless; the buffers hold every assignment, the worst case of one device's experts taking
all). With capacity_factor > 0 each expert takes at most C = ceil(cf x N x K / E) assignments
of a group, first come first served in token order; the rest are dropped (their token gets
nothing from that expert; the residual carries it) and counted, and the grouped matmuls see
only El x C rows.

Expert parallelism (`dispatch="shard_map"`): expert weights [E, D, F] are split over the
mesh axes of the logical axis `experts` (mesh.expert), and the batch is split over them too.
Inside a shard_map each device all-gathers its expert group's tokens and routing (the group:
the devices that differ only in their `expert` index), runs its own E/mesh.expert experts on
the assignments routed to them (ragged_dot skips the rows after its groups), and a
reduce-scatter sums each token's expert outputs back onto the device that holds it. Expert
weights enter the shard_map whole along `embed` (fsdp gathers them at the boundary, as for
any weight) and split along `mlp` over `tensor` (partial sums added with a psum). The result
equals one device's to float rounding when dropless; with a capacity the groups differ (the
capacity is per group of tokens). With row_capacity > 0 instead, each expert takes at most that
many of one batch row's assignments, first come in token order (Hugging Face Switch's fixed
expert_capacity, so that imported checkpoints compute what transformers does); a dropped
assignment keeps its rows in the grouped matmuls with weight 0 and is counted, and the rule is
the same on any mesh (decided on the global [B, T] routing). `dispatch="xla"` runs the same
dropless program on global arrays and leaves the partitioning to XLA (for comparison;
fmjax.preflight measures both).

Auxiliary losses (sown into the `moe_aux` collection per sparse layer, over real tokens:
segment id > 0): router z-loss mean(logsumexp(router logits)^2) (ST-MoE, Zoph et al. 2022)
and the load-balancing loss E x sum_e f_e p_e (Switch, Fedus et al. 2021), f_e the fraction
of assignments routed to e (over N x K, so 1.0 when balanced whatever K), p_e the mean router
probability of e. `aux_metrics` averages them over the sparse layers; the train step
(fmjax/training/step.py) adds them, weighted by config.model.moe, to the loss.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from fmjax import kernels, mesh as mesh_lib
from fmjax.nn import layers

AUX = "moe_aux"  # collection of the per-layer auxiliary values (scanned: stacked per layer)
DISPATCHES = ("shard_map", "xla")


@dataclasses.dataclass(frozen=True)
class MoeConfig:
    """config.model.moe resolved (d_ff never 0 when num_experts > 0); hashable."""
    num_experts: int = 0  # 0 = dense
    top_k: int = 2
    num_shared_experts: int = 0
    interval: int = 1  # every interval-th MLP is sparse: the last block of each group
    d_ff: int = 0
    router_z_loss: float = 0.0
    load_balance_loss: float = 0.0
    capacity_factor: float = 0.0  # 0 = dropless
    row_capacity: int = 0  # 0 = none; else assignments an expert keeps per batch row
    renormalize: bool = True
    dispatch: str = "shard_map"
    grouped_matmul: str = "auto"

    @property
    def enabled(self) -> bool:
        return self.num_experts > 0

    @classmethod
    def from_config(cls, moe, model_d_ff: int) -> MoeConfig:
        return cls(num_experts=moe.num_experts, top_k=moe.top_k,
                   num_shared_experts=moe.num_shared_experts, interval=moe.interval,
                   d_ff=moe.d_ff or model_d_ff, router_z_loss=moe.router_z_loss,
                   load_balance_loss=moe.load_balance_loss, capacity_factor=moe.capacity_factor,
                   row_capacity=moe.row_capacity, renormalize=moe.renormalize,
                   dispatch=moe.dispatch, grouped_matmul=moe.grouped_matmul)


# ---- routing --------------------------------------------------------------------------

def route(router_logits_NE, top_k: int, renormalize: bool):
    """(weights [N, K] float32, experts [N, K] int32, probs [N, E]): the top_k experts of the
    softmax over E, weights renormalised to sum to 1 when `renormalize`."""
    probs_NE = jax.nn.softmax(router_logits_NE.astype(jnp.float32), axis=-1)
    weights_NK, experts_NK = jax.lax.top_k(probs_NE, top_k)
    if renormalize:
        weights_NK = weights_NK / jnp.sum(weights_NK, axis=-1, keepdims=True)
    return weights_NK, experts_NK.astype(jnp.int32), probs_NE


def limit_per_row(experts_BTK, weights_BTK, num_experts: int, row_capacity: int):
    """(weights with the assignments past `row_capacity` per (row, expert) set to 0, their
    count): assignments ranked within their row and expert in (token, k) order."""
    b, t, k = experts_BTK.shape
    onehot_BAE = jax.nn.one_hot(experts_BTK.reshape(b, t * k), num_experts, dtype=jnp.int32)
    rank_BA = jnp.sum(jnp.cumsum(onehot_BAE, axis=1) * onehot_BAE, axis=-1) - 1
    kept_BTK = (rank_BA < row_capacity).reshape(b, t, k)
    return (jnp.where(kept_BTK, weights_BTK, 0).astype(weights_BTK.dtype),
            jnp.sum(~kept_BTK).astype(jnp.int32))


def aux_losses(router_logits_NE, probs_NE, experts_NK, real_N):
    """(load-balancing loss, router z-loss) over the tokens where real_N (see the module
    docstring); float32 scalars."""
    e = probs_NE.shape[-1]
    real_N = real_N.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(real_N), 1.0)
    lse_N = jax.nn.logsumexp(router_logits_NE.astype(jnp.float32), axis=-1)
    z_loss = jnp.sum(jnp.square(lse_N) * real_N) / n
    counts_E = jnp.sum(jax.nn.one_hot(experts_NK, e, dtype=jnp.float32).sum(1) * real_N[:, None],
                       axis=0)
    fraction_E = counts_E / (n * experts_NK.shape[-1])
    prob_E = jnp.sum(probs_NE * real_N[:, None], axis=0) / n
    return e * jnp.sum(fraction_E * prob_E), z_loss


# ---- dispatch ---------------------------------------------------------------------------

def grouped_matmul(x_RD, w_EDF, group_sizes_E, impl: str = "auto"):
    """Rows of each group times its expert's matrix, rows past the groups 0
    (jax.lax.ragged_dot's contract): `impl` ragged_dot, megablox (the TPU kernel; Pallas
    interpret mode elsewhere, for tests) or auto (megablox where the trace targets TPU and it
    takes the operands, else ragged_dot), through the kernel seam."""
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(x_RD, w_EDF, group_sizes_E)
    if impl == "megablox":
        return kernels.run("grouped_matmul", x_RD, w_EDF, group_sizes_E)
    return kernels.call("grouped_matmul", jax.lax.ragged_dot, x_RD, w_EDF, group_sizes_E)


def expert_ffn(x_ND, experts_NK, weights_NK, w_gate_EDF, w_up_EDF, w_down_EFD, *, activation,
               capacity_factor: float = 0.0, num_experts: int | None = None,
               expert_axes: tuple = (), tensor_axes: tuple = (), matmul: str = "auto"):
    """(y [N, D], dropped assignments): sum_k weights[n, k] x expert_{experts[n, k]}(x[n]).

    Called on global arrays (no axes) or on one device's blocks inside a shard_map: then the
    weights hold this device's El = E / |expert_axes| experts (and F / |tensor_axes| of their
    hidden units), x and the routing this device's tokens; the tokens of the expert group are
    all-gathered over `expert_axes`, and the outputs summed back over `tensor_axes` (partial
    products of the hidden units) and reduce-scattered over `expert_axes`. `w_gate_EDF` is
    None for an ungated activation. The dropped count is this group's (summed by the caller)."""
    act, _ = layers.MLP_ACTIVATIONS[activation]
    e_local = w_up_EDF.shape[0]
    if expert_axes:
        x_ND, experts_NK, weights_NK = (jax.lax.all_gather(a, expert_axes, axis=0, tiled=True)
                                        for a in (x_ND, experts_NK, weights_NK))
        first = jax.lax.axis_index(expert_axes) * e_local
    else:
        first = 0
    num_experts = num_experts or e_local
    n, k = experts_NK.shape
    expert_A = experts_NK.reshape(-1)
    local_A = expert_A - first
    mine_A = (local_A >= 0) & (local_A < e_local)
    dropped = jnp.zeros((), jnp.int32)
    rows = n * k  # sorted rows the grouped matmuls see: every assignment (dropless) ...
    if capacity_factor > 0:
        capacity = math.ceil(capacity_factor * n * k / num_experts)
        rows = min(rows, e_local * capacity)  # ... or the most this device's experts keep
        onehot_AE = jax.nn.one_hot(expert_A, num_experts, dtype=jnp.int32)
        rank_A = jnp.sum(jnp.cumsum(onehot_AE, axis=0) * onehot_AE, axis=-1) - 1  # in its expert
        kept_A = rank_A < capacity
        dropped = jnp.sum(mine_A & ~kept_A).astype(jnp.int32)
        mine_A = mine_A & kept_A
    key_A = jnp.where(mine_A, local_A, e_local)  # others (and dropped) sort after the groups
    order_R = jnp.argsort(key_A, stable=True)[:rows]  # this device's groups come first
    group_sizes_E = jnp.sum(jax.nn.one_hot(key_A, e_local, dtype=jnp.int32), axis=0)
    x_RD = jnp.take(x_ND, order_R // k, axis=0)
    h_RF = grouped_matmul(x_RD, w_up_EDF, group_sizes_E, matmul)
    if w_gate_EDF is None:
        h_RF = act(h_RF)
    else:
        h_RF = act(grouped_matmul(x_RD, w_gate_EDF, group_sizes_E, matmul)) * h_RF
    out_RD = grouped_matmul(h_RF, w_down_EFD, group_sizes_E, matmul)  # past the groups: 0
    out_RD = out_RD * jnp.take(weights_NK.reshape(-1), order_R)[:, None].astype(out_RD.dtype)
    out_AD = jnp.zeros((n * k, out_RD.shape[-1]), out_RD.dtype).at[order_R].set(
        out_RD, unique_indices=True)
    y_ND = jnp.sum(out_AD.reshape(n, k, -1), axis=1)
    if tensor_axes:
        y_ND = jax.lax.psum(y_ND, tensor_axes)
    if expert_axes:
        y_ND = jax.lax.psum_scatter(y_ND, expert_axes, scatter_dimension=0, tiled=True)
    return y_ND, dropped


def dispatch(x_BTD, experts_BTK, weights_BTK, w_gate_EDF, w_up_EDF, w_down_EFD, *, activation,
             capacity_factor: float, mode: str, matmul: str = "auto"):
    """expert_ffn over the current mesh: one shard_map (see the module docstring) when the mesh
    has more than one device, mode is shard_map and the token blocks divide evenly; else on
    global arrays (one device, `xla` mode, or the batch of 1 that initialisation traces)."""
    b, t, d = x_BTD.shape
    num_experts = w_up_EDF.shape[0]
    mesh = jax.sharding.get_abstract_mesh()
    kw = dict(activation=activation, capacity_factor=capacity_factor, num_experts=num_experts,
              matmul=matmul)
    def axes_of(logical):  # mesh axes of size 1 left out: no collectives over them
        return tuple(a for a in mesh_lib.mesh_axes_of(logical) if mesh.shape[a] > 1)

    token_axes = tuple(axes_of(a) if not mesh.empty else () for a in ("batch", "length"))
    expert_axes = axes_of("experts") if not mesh.empty else ()
    tensor_axes = axes_of("mlp") if not mesh.empty else ()

    def size(axes):
        return math.prod(mesh.shape[a] for a in axes)

    plain = (mesh.empty or mesh.size == 1 or mode == "xla" or b % size(token_axes[0])
             or t % size(token_axes[1]))
    if plain:
        y_ND, dropped = expert_ffn(x_BTD.reshape(b * t, d), experts_BTK.reshape(b * t, -1),
                                   weights_BTK.reshape(b * t, -1), w_gate_EDF, w_up_EDF,
                                   w_down_EFD, **kw)
        return y_ND.reshape(b, t, d), dropped
    if not set(expert_axes) <= set(token_axes[0]):
        raise ValueError(f"mesh axes {expert_axes} of 'experts' must also split 'batch' "
                         f"{token_axes[0]} (fmjax/mesh.py LOGICAL_RULES)")
    tokens = P(token_axes[0] or None, token_axes[1] or None, None)
    weight = P(expert_axes or None, None, tensor_axes or None)
    down = P(expert_axes or None, tensor_axes or None, None)
    batch_axes = tuple(a for axes in token_axes for a in axes)

    def local(x_btD, experts_btK, weights_btK, w_gate, w_up, w_down):
        bl, tl, _ = x_btD.shape
        y_ND, dropped = expert_ffn(
            x_btD.reshape(bl * tl, d), experts_btK.reshape(bl * tl, -1),
            weights_btK.reshape(bl * tl, -1), w_gate, w_up, w_down,
            expert_axes=expert_axes, tensor_axes=tensor_axes, **kw)
        if batch_axes:  # every group's, over its local experts
            dropped = jax.lax.psum(dropped, batch_axes)
        return y_ND.reshape(bl, tl, d), dropped

    gate_spec = weight if w_gate_EDF is not None else None
    # a Pallas kernel's outputs carry no varying-axes type, so shard_map's check is off where
    # megablox may run (its values and gradients on a mesh: tests/kernels/test_megablox.py)
    pallas = matmul == "megablox" or (matmul == "auto"
                                      and kernels.unavailable("grouped_matmul") is None)
    return jax.shard_map(local, mesh=mesh,
                         in_specs=(tokens, tokens, tokens, gate_spec, weight, down),
                         out_specs=(tokens, P()), check_vma=not pallas)(
        x_BTD, experts_BTK, weights_BTK, w_gate_EDF, w_up_EDF, w_down_EFD)


# ---- the module ---------------------------------------------------------------------------

class MoeMLP(nn.Module):
    """Sparse MLP: x [B, T, D] -> [B, T, D], the routed experts' weighted sum (+ the shared
    experts' output). Params: router/kernel [D, E]; experts/{gate,}up [E, D, F] and
    experts/down [E, F, D] (logical axes experts, embed, mlp); shared/{gate,up,down} (a dense
    MLP of num_shared_experts x F hidden units: the sum of that many experts of width F)."""
    moe: MoeConfig
    activation: str  # layers.MLP_ACTIVATIONS; gated ones get experts/gate
    init_std: float = 0.02
    out_init_std: float = 0.02
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x_BTD, real_BT=None, *, deterministic=True):
        moe, (b, t, d) = self.moe, x_BTD.shape
        e, f = moe.num_experts, moe.d_ff
        _, gated = layers.MLP_ACTIVATIONS[self.activation]
        router = layers.Dense((e,), ("embed",), (None,), init_std=self.init_std,
                              dtype=jnp.float32, param_dtype=self.param_dtype, name="router")
        router_logits_BTE = router(x_BTD.astype(jnp.float32))  # routing in float32
        logits_NE = router_logits_BTE.reshape(b * t, e)
        weights_NK, experts_NK, probs_NE = route(logits_NE, moe.top_k, moe.renormalize)
        real_N = (jnp.ones((b * t,), bool) if real_BT is None else real_BT.reshape(-1))
        load_balance, z_loss = aux_losses(logits_NE, probs_NE, experts_NK, real_N)

        experts = _Experts(e, f, gated, self.init_std, self.out_init_std, self.param_dtype,
                           name="experts")
        w_gate_EDF, w_up_EDF, w_down_EFD = (
            None if w is None else w.astype(self.dtype) for w in experts(d))
        experts_BTK, weights_BTK = experts_NK.reshape(b, t, -1), weights_NK.reshape(b, t, -1)
        row_dropped = jnp.zeros((), jnp.int32)
        if moe.row_capacity:
            weights_BTK, row_dropped = limit_per_row(experts_BTK, weights_BTK, e,
                                                     moe.row_capacity)
        y_BTD, dropped = dispatch(
            x_BTD.astype(self.dtype), experts_BTK, weights_BTK.astype(self.dtype), w_gate_EDF,
            w_up_EDF, w_down_EFD, activation=self.activation,
            capacity_factor=moe.capacity_factor, mode=moe.dispatch, matmul=moe.grouped_matmul)
        dropped = dropped + row_dropped
        self.sow(AUX, "load_balance", load_balance)
        self.sow(AUX, "router_z", z_loss)
        self.sow(AUX, "dropped", dropped)
        if moe.num_shared_experts:
            y_BTD = y_BTD + layers.MLP(
                d_ff=moe.num_shared_experts * f, activation=self.activation,
                init_std=self.init_std, out_init_std=self.out_init_std, dtype=self.dtype,
                param_dtype=self.param_dtype, name="shared")(x_BTD, deterministic=deterministic)
        return layers.constrain(y_BTD, "batch", "length", "embed")


class _Experts(nn.Module):
    """The routed experts' weights, stacked along E (logical axis `experts`)."""
    num_experts: int
    d_ff: int
    gated: bool
    init_std: float
    out_init_std: float
    param_dtype: object

    @nn.compact
    def __call__(self, d: int):
        e, f = self.num_experts, self.d_ff

        def param(name, shape, axes, std):
            return self.param(name, layers.param_init(layers.normal_init(std), axes), shape,
                              self.param_dtype)

        w_in = ("experts", "embed", "mlp")
        gate = param("gate", (e, d, f), w_in, self.init_std) if self.gated else None
        up = param("up", (e, d, f), w_in, self.init_std)
        down = param("down", (e, f, d), ("experts", "mlp", "embed"), self.out_init_std)
        return gate, up, down


# ---- what the train step and the FLOP count read -----------------------------------------

METRICS = ("load_balance", "router_z", "dropped")


def zero_metrics() -> dict:
    return {k: jnp.zeros((), jnp.float32) for k in METRICS}


def aux_metrics(collection) -> dict:
    """{load_balance, router_z: means over the sparse layers; dropped: total}, float32, of a
    `moe_aux` collection (stacked per scanned layer or not); zeros for what it lacks."""
    sums: dict[str, jax.Array] = {}
    counts: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(collection)[0]:
        name = next(str(p.key) for p in reversed(path) if hasattr(p, "key"))
        sums[name] = sums.get(name, 0.0) + jnp.sum(leaf.astype(jnp.float32))
        counts[name] = counts.get(name, 0) + leaf.size
    out = zero_metrics()
    out.update({k: sums[k] / counts[k] for k in ("load_balance", "router_z") if k in sums})
    if "dropped" in sums:
        out["dropped"] = sums["dropped"]
    return out


def expert_params(abstract_params) -> int:
    """Parameters of the routed experts (leaves under an `experts` module)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        if any(getattr(p, "key", None) == "experts" for p in path):
            total += int(math.prod(leaf.shape))
    return total


def active_params(num_params: int, abstract_params, moe: MoeConfig) -> int:
    """Parameters one token passes through: all but the (E - K) / E of the routed experts it
    is not sent to (the router and shared experts count in full; capacity drops do not
    lower it). fmjax's FLOP convention counts these (fmjax/models/flops.py)."""
    if not moe.enabled:
        return num_params
    routed = expert_params(abstract_params)
    return num_params - routed // moe.num_experts * (moe.num_experts - moe.top_k)
