"""Ring attention against fmjax's all-gather context attention (fmjax/nn/context_attention.py),
measured: the choice docs/long-context.md records.

  python benchmarks/context_ring.py [--config=configs/llama3_8b_32k.py] [--topology=v5p-128]

First checks, on 8 CPU devices, that the ring below gives the all-gather's outputs and q/k/v
gradients (causal in zigzag order, prefix LM, bidirectional; packed rows), then pre-flights the
config's real train step (fmjax.aot, `--fast`) once with each attention and prints per-device
peak memory and compile time; the last line is JSON.

The ring (kept here, not in fmjax/: it lost): each shard keeps its queries; keys, values and
their segment ids, positions, row indices and prefix mask go around the sequence's mesh axes
with `ppermute`, one shard's block per step, online softmax (running max and sum) over the
blocks; a custom backward runs the ring again from the saved log-sum-exp, the key and value
gradients travelling with their blocks and arriving home after C steps. Queries go in the same
blocks as the all-gather's (ca.query_block). Causal blocks are masked, not skipped.
"""
import argparse
import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # TPU targets: libtpu compile-only devices
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from fmjax.nn import context_attention as ca, context_parallel as cp  # noqa: E402
from fmjax.nn.masks import attention_mask  # noqa: E402

NEG = -1e30


def _mask(q_rows, kv_rows, causal):
    q_seg, q_pos, q_idx = q_rows
    kv_seg, kv_pos, kv_idx, kv_pre = kv_rows
    m = attention_mask(q_seg, kv_seg, q_pos, kv_pos, causal=causal,
                       kv_prefix_BS=kv_pre)
    if causal:
        order = (kv_idx[:, None, :] <= q_idx[:, :, None])[:, None]
        if kv_pre is not None:
            order = order | (kv_pre[:, None, None, :] > 0)
        m = m & order
    return m


def make_ring(axes, shards, causal, scale, groups):
    """The ring for one shard_map body: a custom_vjp (q, k, v, q_rows, kv_rows) -> out whose
    forward and backward each pass K/V (and, backward, their gradients) C times around the
    sequence's mesh axes, queries in ca.query_block blocks, online softmax. Shapes inside:
    q [B, L, H, K], k and v [B, L, G, K] (a shard's L = T / C), running output o [B, H, L, K],
    max m and sum l [B, H, L, 1], rows (segment ids, positions, row index[, prefix]) [B, L]."""
    perm = [(i, (i + 1) % shards) for i in range(shards)]
    rot = lambda x: jax.lax.ppermute(x, axes, perm)  # noqa: E731  shard i -> i + 1

    def rep(x):
        return jnp.repeat(x, groups, axis=2)

    def logits(q, k):
        return jnp.einsum("bthk,bshk->bhts", q * scale, rep(k).astype(q.dtype),
                          preferred_element_type=jnp.float32)

    def blocks(x, n, axis):  # [.., L, ..] -> [L/n, .., n, ..]
        return jnp.moveaxis(x.reshape(*x.shape[:axis], x.shape[axis] // n, n,
                                      *x.shape[axis + 1:]), axis, 0)

    def unblocks(x, axis):
        x = jnp.moveaxis(x, 0, axis)
        return x.reshape(*x.shape[:axis], x.shape[axis] * x.shape[axis + 1], *x.shape[axis + 2:])

    def fwd_core(q, k, v, q_rows, kv_rows):
        b, t, h, d = q.shape
        n = ca.query_block(t, k.shape[1], b * h)
        o = jnp.zeros((b, h, t, v.shape[-1]), jnp.float32)
        m = jnp.full((b, h, t, 1), NEG, jnp.float32)
        l = jnp.zeros((b, h, t, 1), jnp.float32)
        qb = blocks(q, n, 1)
        qrb = tuple(blocks(r, n, 1) for r in q_rows)

        def body(carry, _):
            k_, v_, rows, o, m, l = carry

            def one(args):
                q1, r1, o1, m1, l1 = args
                s = jnp.where(_mask(r1, rows, causal), logits(q1, k_), NEG)
                m_new = jnp.maximum(m1, jnp.max(s, -1, keepdims=True))
                p = jnp.exp(s - m_new)
                corr = jnp.exp(m1 - m_new)
                l1 = l1 * corr + jnp.sum(p, -1, keepdims=True)
                o1 = o1 * corr + jnp.einsum("bhts,bshk->bhtk", p.astype(v.dtype), rep(v_),
                                            preferred_element_type=jnp.float32)
                return o1, m_new, l1
            o, m, l = jax.lax.map(one, (qb, qrb, blocks(o, n, 2), blocks(m, n, 2),
                                        blocks(l, n, 2)))
            o, m, l = unblocks(o, 2), unblocks(m, 2), unblocks(l, 2)
            return (rot(k_), rot(v_), jax.tree.map(rot, rows), o, m, l), None

        (_, _, _, o, m, l), _ = jax.lax.scan(body, (k, v, kv_rows, o, m, l), None, shards)
        out = (o / l)
        lse = m + jnp.log(l)
        return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype), lse

    @jax.custom_vjp
    def ring(q, k, v, q_rows, kv_rows):
        return fwd_core(q, k, v, q_rows, kv_rows)[0]

    def ring_fwd(q, k, v, q_rows, kv_rows):
        out, lse = fwd_core(q, k, v, q_rows, kv_rows)
        return out, (q, k, v, q_rows, kv_rows, out, lse)

    def ring_bwd(res, dout):
        q, k, v, q_rows, kv_rows, out, lse = res
        delta = jnp.transpose(jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1),
                              (0, 2, 1))[..., None]
        dq = jnp.zeros(q.shape, jnp.float32)
        dk = jnp.zeros(k.shape, jnp.float32)
        dv = jnp.zeros(v.shape, jnp.float32)
        b, t, h, d = q.shape
        g = k.shape[2]

        n = ca.query_block(t, k.shape[1], b * h)
        qb = blocks(q, n, 1)
        qrb = tuple(blocks(r, n, 1) for r in q_rows)
        dob = blocks(dout, n, 1)
        lseb = blocks(lse, n, 2)
        deltab = blocks(delta, n, 2)

        def body(carry, _):
            k_, v_, rows, dk_, dv_, dq = carry
            s_len = k_.shape[1]

            def one(acc, args):
                dk1, dv1 = acc
                q1, r1, do1, lse1, delta1 = args
                s = jnp.where(_mask(r1, rows, causal), logits(q1, k_), NEG)
                p = jnp.exp(s - lse1)
                dv_full = jnp.einsum("bhts,bthk->bshk", p.astype(do1.dtype), do1,
                                     preferred_element_type=jnp.float32)
                dp = jnp.einsum("bthk,bshk->bhts", do1, rep(v_).astype(do1.dtype),
                                preferred_element_type=jnp.float32)
                ds = p * (dp - delta1)
                dq1 = jnp.einsum("bhts,bshk->bthk", ds.astype(q.dtype), rep(k_).astype(q.dtype),
                                 preferred_element_type=jnp.float32) * scale
                dk_full = jnp.einsum("bhts,bthk->bshk", ds.astype(q.dtype), q1,
                                     preferred_element_type=jnp.float32) * scale
                dk1 = dk1 + dk_full.reshape(b, s_len, g, groups, d).sum(3)
                dv1 = dv1 + dv_full.reshape(b, s_len, g, groups, -1).sum(3)
                return (dk1, dv1), dq1
            (dk_, dv_), dqb = jax.lax.scan(one, (dk_, dv_), (qb, qrb, dob, lseb, deltab))
            dq = dq + unblocks(dqb, 1)
            return (rot(k_), rot(v_), jax.tree.map(rot, rows), rot(dk_), rot(dv_), dq), None

        (_, _, _, dk, dv, dq), _ = jax.lax.scan(body, (k, v, kv_rows, dk, dv, dq), None, shards)
        return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None)

    ring.defvjp(ring_fwd, ring_bwd)
    return ring


def ring_attention(q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT, prefix_mask_BT=None,
                   *, causal, scale=None, layout=cp.CONTIGUOUS):
    mesh = jax.sharding.get_abstract_mesh()
    seq_axes = cp.sequence_axes(mesh)
    shards = cp.context_size(mesh)
    t, h = q_BTHK.shape[1:3]
    index_T = jnp.asarray(cp.natural_index(t, shards, layout))
    scale_ = q_BTHK.shape[-1] ** -0.5 if scale is None else scale
    ring = make_ring(seq_axes, shards, causal, scale_, h // k_BTGK.shape[2])

    def local(q, k, v, seg, pos, *prefix):
        length = q.shape[1]
        idx = jax.lax.dynamic_slice_in_dim(index_T, jax.lax.axis_index(seq_axes) * length, length)
        idx = jnp.broadcast_to(idx, seg.shape)
        q_rows = (seg, pos, idx)
        kv_rows = (seg, pos, idx, prefix[0] if prefix else None)
        return ring(q, k, v, q_rows, kv_rows)

    return ca.over_sequence(local, q_BTHK, k_BTGK, v_BTGK, segment_ids_BT, positions_BT,
                            prefix_mask_BT)


def check_equal() -> None:
    """ring == all-gather (real tokens' values, q/k/v gradients) on 8 CPU devices, split 8
    and 4 x tensor 2."""
    import flax.linen as nn
    import numpy as np
    from fmjax import mesh as mesh_lib
    from tests.nn.test_context_attention import B, G, H, K, T, context_mesh, packed_rows
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, K)), jnp.float32) for n in (H, G, G))
    seg, pos, prefix = packed_rows()
    for context, tensor in ((8, 1), (4, 2)):
        for causal, pre, layout in ((True, None, cp.ZIGZAG), (True, prefix, cp.ZIGZAG),
                                    (False, None, cp.CONTIGUOUS)):
            def run(attend):
                def f(q, k, v):  # padding's outputs (no key to see) are never read: left out
                    out = attend(q, k, v, seg, pos, pre, causal=causal, layout=layout)
                    return jnp.where((seg > 0)[:, :, None, None], out, 0.0)
                loss = lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
                return jax.jit(lambda *a: (f(*a), jax.grad(loss, (0, 1, 2))(*a)))(q, k, v)
            with jax.set_mesh(context_mesh(context, tensor)), \
                    nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
                got, want = run(ring_attention), run(ca.context_attention)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(a, b, atol=2e-5)
    print("ring == all-gather (values and q/k/v gradients) on 8 CPU devices: ok", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/llama3_8b_32k.py")
    parser.add_argument("--topology", default="v5p-128")
    args = parser.parse_args()
    check_equal()
    from fmjax.aot import compile as aot
    from fmjax.config import sibling_config
    config = sibling_config(os.path.join(ROOT, args.config),
                            os.path.basename(args.config)[:-len(".py")])
    original, rows = ca.context_attention, {}
    for name, attend in (("all-gather", original), ("ring", ring_attention)):
        ca.context_attention = attend
        result = aot.run(config, args.topology, fast=True)
        m = result.memory
        rows[name] = {"peak_gib": round(m.required / 2**30, 2),
                      "compile_s": round(result.compile_s, 1)}
    ca.context_attention = original
    print(f"{args.config} on {args.topology} (--fast), per device of "
          f"{m.available / 2**30:.2f} GiB:")
    print("| attention | peak GiB | compile s |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['peak_gib']} | {row['compile_s']} |")
    print(json.dumps({"config": args.config, "topology": args.topology, **rows}))


if __name__ == "__main__":
    main()
