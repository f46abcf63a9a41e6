"""python -m fmjax.info --config=configs/NAME.py : parameter count and per-module breakdown,
from jax.eval_shape (nothing is allocated). The last line is JSON with a `params` key."""
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
    from fmjax import models, state
    model, cfg = models.build(config)
    abstract, _ = state.abstract_params(model, cfg.seq_len)
    total = state.count_params(abstract)
    return {"family": cfg.family, "params": total, "breakdown": breakdown(abstract),
            "layers": cfg.n_layers, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff, "vocab_size": cfg.vocab_size,
            "seq_len": cfg.seq_len}


def main(argv):
    cli.no_extra_args(argv)
    info = summarize(cli.load_config())
    print(f"{info['family']}: {info['layers']} layers, d_model {info['d_model']}, "
          f"{info['n_heads']} heads ({info['n_kv_heads']} kv), d_ff {info['d_ff']}, "
          f"vocab {info['vocab_size']}, seq {info['seq_len']}")
    width = max(len(k) for k in info["breakdown"])
    for name, n in info["breakdown"].items():
        print(f"  {name:<{width}}  {n:>15,}  {100 * n / info['params']:5.1f}%")
    print(f"  {'total':<{width}}  {info['params']:>15,}")
    print(json.dumps({"params": info["params"], "family": info["family"]}))


if __name__ == "__main__":
    cli.run(main)
