"""python -m fmjax.info --config=configs/NAME.py : parameter count and per-module breakdown,
from jax.eval_shape (nothing is allocated). The last line is JSON with `params` (the published
count: heads a paper does not count, e.g. BERT's MLM head, are listed under `excluded`) and
`total_params` (everything)."""
import json

import jax
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
cli.define_config_flag()


def breakdown(abstract_params, depth: int = 2) -> dict[str, int]:
    """Parameter counts grouped by the first `depth` levels of the module path."""
    out: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        name = "/".join(str(getattr(p, "key", p)) for p in path[:depth])
        out[name] = out.get(name, 0) + int(leaf.size)
    return out


def summarize(config) -> dict:
    """`params` is the published count: every parameter but the family's uncounted heads
    (Family.uncounted_params, e.g. BERT's MLM head), which `excluded` lists; `total_params`
    counts everything the model holds. `breakdown` covers the counted params. A mixture of
    experts adds `active_params`: the counted params one token passes through (all but the
    routed experts it is not sent to; the count MFU uses, fmjax/models/flops.py)."""
    from fmjax import models
    from fmjax.nn import moe
    from fmjax.training import state
    model, cfg = models.build(config)
    family = models.get_family(cfg.family)
    abstract, _ = state.abstract_params(model, cfg.seq_len)
    total = state.count_params(abstract)
    excluded = {name: state.count_params(abstract[name])
                for name in family.uncounted_params if name in abstract}
    counted = {k: v for k, v in abstract.items() if k not in excluded}
    info = {"family": cfg.family, "kind": family.kind, "params": total - sum(excluded.values()),
            "total_params": total, "excluded": excluded, "breakdown": breakdown(counted),
            "layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size,
            "seq_len": cfg.seq_len}
    if family.kind == "encoder_decoder":
        info["decoder_layers"] = cfg.n_decoder_layers
    if cfg.moe.enabled:
        info["active_params"] = moe.active_params(info["params"], counted, cfg.moe)
        info["moe"] = {"experts": cfg.moe.num_experts, "top_k": cfg.moe.top_k,
                       "shared": cfg.moe.num_shared_experts, "interval": cfg.moe.interval,
                       "expert_d_ff": cfg.moe.d_ff}
    return info


def main(argv):
    cli.no_extra_args(argv)
    info = summarize(cli.load_config())
    layers = f"{info['layers']} layers"
    if "decoder_layers" in info:
        layers = f"{info['layers']} encoder + {info['decoder_layers']} decoder layers"
    print(f"{info['family']} ({info['kind']}): {layers}, d_model {info['d_model']}, "
          f"{info['n_heads']} heads ({info['n_kv_heads']} kv), d_ff {info['d_ff']}, "
          f"vocab {info['vocab_size']}, seq {info['seq_len']}")
    width = max(len(k) for k in [*info["breakdown"], "total"])
    for name, n in info["breakdown"].items():
        print(f"  {name:<{width}}  {n:>15,}  {100 * n / info['params']:5.1f}%")
    print(f"  {'total':<{width}}  {info['params']:>15,}")
    for name, n in info["excluded"].items():
        print(f"  not counted: {name} {n:,} (total with it: {info['total_params']:,})")
    last = {"params": info["params"], "total_params": info["total_params"],
            "excluded": info["excluded"], "family": info["family"]}
    if "active_params" in info:
        mo = info["moe"]
        print(f"  {'active':<{width}}  {info['active_params']:>15,}  (per token: top-{mo['top_k']}"
              f" of {mo['experts']} experts, {mo['shared']} shared, every {mo['interval']} "
              f"MLP(s) sparse, expert d_ff {mo['expert_d_ff']})")
        last["active_params"] = info["active_params"]
    print(json.dumps(last))


if __name__ == "__main__":
    cli.run(main)
