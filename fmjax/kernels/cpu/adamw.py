"""fmjax's AdamW update for XLA:CPU (fmjax/kernels/cpu/adamw.cc), float32, in place: the
`adamw` operation of fmjax/kernels/.

`update` is the same step as the optax chain fmjax/training/optimizer.py builds for adamw
(clip_by_global_norm, then adamw with its weight-decay mask), on the same optimizer state, so
checkpoints move freely between this path and optax's: one kernel call per parameter reads
p, the summed gradient, mu and nu once and writes p, mu and nu in place, where XLA:CPU runs
optax's chain as four or five fusions per parameter, each reading its inputs again, with
true divisions by scalars. The optimizer factory takes it for adamw with no frozen leaves; it
runs for float32 parameters on one CPU device when the kernel builds (ffi.py); anywhere else
optax. tests/kernels/test_cpu_adamw.py checks it against optax.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import optax

from fmjax import kernels
from fmjax.kernels.cpu import ffi as cpu_ffi

SOURCE = pathlib.Path(__file__).with_name("adamw.cc")
_TARGETS = {"fmjax_cpu_adamw": "FmjaxAdamW"}

unavailable = cpu_ffi.loader(SOURCE, _TARGETS)  # None once built and registered, else why not


def unsupported(grad_sums, tokens, grad_norm, opt_state, params, finite, **_) -> str | None:
    """Why the kernel does not update these parameters, else None: it needs float32
    parameters on one CPU device."""
    if not all(p.dtype == jnp.float32 for p in jax.tree.leaves(params)):
        return "the kernel takes float32 parameters"
    return None if cpu_ffi.single_cpu_device() else "not a single CPU device"


def _update_leaf(hyper, p, g, mu, nu):
    """(p, mu, nu) after one AdamW step of one parameter, written over p's, mu's and nu's
    buffers (XLA copies first where the old values are still needed)."""
    if unavailable() is not None:
        raise RuntimeError(f"fmjax: the AdamW kernel is unavailable: {unavailable()}")
    shape = jax.ShapeDtypeStruct(p.shape, jnp.float32)
    call = jax.ffi.ffi_call("fmjax_cpu_adamw", (shape, shape, shape),
                            input_output_aliases={1: 0, 3: 1, 4: 2}, vmap_method="sequential")
    return tuple(call(hyper, p, g, mu, nu))


def update(grad_sums, tokens, grad_norm, opt_state, params, finite, *, b1, b2, eps,
           weight_decay, clip_norm, schedule, decay_mask):
    """(params, opt_state) after optax's clip_by_global_norm(clip_norm) + adamw step on grads
    = grad_sums / tokens, whose global norm is grad_norm; with finite False, params and
    opt_state come back unchanged. opt_state is the state of that optax chain
    (fmjax/training/optimizer.py), updated in the same layout."""
    *clip_state, (adam, masked, sched) = opt_state  # optax.chain's: ([clip,] adamw)
    count = optax.safe_increment(adam.count)
    scale = 1.0 / tokens
    if clip_norm > 0:
        scale = jnp.where(grad_norm < clip_norm, scale, scale * (clip_norm / grad_norm))
    hyper = jnp.stack([jnp.asarray(x, jnp.float32) for x in [  # adamw.cc's order
        scale, b1, b2, eps, -schedule(sched.count), weight_decay,
        1.0 / (1.0 - b1 ** count), 1.0 / (1.0 - b2 ** count), finite]])
    no_decay = hyper.at[5].set(0.0)

    def leaf(p, g, mu, nu, decays):
        return _update_leaf(hyper if decays else no_decay, p, g, mu, nu)

    treedef = jax.tree.structure(params)
    out = treedef.flatten_up_to(jax.tree.map(leaf, params, grad_sums, adam.mu, adam.nu,
                                             decay_mask(params)))
    new_params, mu, nu = (treedef.unflatten(part) for part in zip(*out))
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    new_adam = adam._replace(count=keep(count, adam.count), mu=mu, nu=nu)
    new_sched = sched._replace(count=keep(optax.safe_increment(sched.count), sched.count))
    return new_params, (*clip_state, (new_adam, masked, new_sched))


kernels.register("adamw", kernels.Implementation(
    update, unsupported, lambda: unavailable()))
