"""Exports a checkpoint for serving without fmjax: the KV-cached prefill and decode step of
fmjax.generation.decoding, serialized with `jax.export` (StableHLO), beside the weights, the
tokenizer file and a manifest (`python -m fmjax.export --format=stablehlo`). A reader needs jax,
numpy and the tokenizer's library only (examples/stablehlo_generate.py; docs/deployment.md).

The artifact, a new directory:
  manifest.json       what a reader needs: kind, lengths, vocab, the prompt layout and special
                      ids, every weight's and cache entry's shape and dtype, each function's
                      signature and the platforms it was lowered for
  prefill.jax_export  Exported.serialize() of prefill
  decode.jax_export   Exported.serialize() of decode
  weights.npz         the params (layer stacks unrolled) as flat "a/b/c" names -> arrays;
                      plain numeric arrays (np.load(path, allow_pickle=False) reads them)
  tokenizer.model | tokenizer.json   the checkpoint's tokenizer file, byte for byte

The functions (W = the weights dict as np.load gives it, C = the cache dict):
  prefill(W, tokens_BP, segment_ids_BP) -> (logits_BV, C)
      decoders: left-padded prompts (segment ids 1 on a prompt's tokens, 0 on padding);
      encoder-decoders: right-padded encoder inputs. logits_BV: the first new token's.
  decode(W, C, token_B) -> (logits_BV, C)
      one new token per row; logits of the next. C carries its own positions.
Tokens and segment ids are int32, logits float32, the cache's keys/values in the model's
dtype. A caller threads C from prefill through decode; it never needs to look inside.

Polymorphism (jax.export symbolic shapes): prefill is polymorphic in the batch B and the
prompt width P, 2 <= P <= max_length (spelled q + 1 in its signature: see _decoder_dims;
encoder-decoders: any encoder width S); decode in B (and, for encoder-decoders, the S its
cache was filled with). The cache's length (max_length) is static: P + new tokens <=
max_length for decoders, new tokens <= max_length for encoder-decoders; past that the cache's
writes are clamped to its last slot and the tokens are wrong (nothing checks it inside). The
weights' shapes are static. One artifact serves every batch size and prompt length; each new
(B, P) shape compiles once in the reader (jax.jit's cache).

The programs are traced with every fmjax kernel off (kernels.xla_only: no custom calls a
reader could not resolve) and attention_impl = "xla" (jax.nn.dot_product_attention: no
CPU-specific batch chunking, which needs a static batch). A weight dtype numpy cannot hold
(bfloat16, int4) is stored widened (float32, int8) and narrowed back inside the functions, so
a quantized checkpoint (fmjax.quantize) exports its integers and scales and is dequantized
inside the exported functions as in fmjax.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import export as jax_export

from fmjax import kernels, models
from fmjax.data import tokenizer_files
from fmjax.generation import decoding, server
from fmjax.generation.loading import load_run
from fmjax.quantization import guard
from fmjax.training import checkpoint

FORMAT = "fmjax-stablehlo"
VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
PLATFORMS = ("cpu", "cuda", "tpu")  # lowered for all of these unless told otherwise
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's platform names
SPECIALS = ("bos", "eos", "pad", "unk")  # the tokenizer's special ids in the manifest
POSITION = "next_position_B"  # the cache entry decode reads its positions from
# dtypes numpy cannot hold without ml_dtypes -> the dtype stored (widened, exact)
_STORED = {jnp.dtype(jnp.bfloat16): np.dtype(np.float32), jnp.dtype(jnp.int4): np.dtype(np.int8)}


class CannotExport(ValueError):
    """The checkpoint's family has no exported layout, or an option does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Result:
    path: str
    step: int  # -1 for an export
    family: str
    max_length: int
    weights_bytes: int


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one model kind lays out its prompts and fills and steps its cache."""
    prompt: tuple[str, str]  # prefill's input names after W
    padding: str  # "left" | "right"
    min_width: int  # the narrowest prompt batch prefill takes
    cache_holds_prompt: bool  # new tokens <= max_length - P (else <= max_length)
    continues_prompt: bool  # decoders: the text continues the prompt
    # (model, params, tokens, segments, max_length, prefix_lm) -> (logits_BV, cache, next
    # position per row)
    prefill: Callable
    step: Callable  # decoding.*_step(model, params, cache, token_B, position_B)
    # max_length -> prefill's symbolic (batch, prompt width) and the rules on them, in words
    dims: Callable[[int], tuple]
    # decode's (batch, prompt width) in a scope of its own, to shape its cache from: symbolic
    # only where the cache depends on it (jax.export wants every symbol, and every symbol its
    # constraints name, among the arguments' shapes)
    decode_dims: Callable[[], tuple]


def _decoder_prefill(model, params, tokens_BP, segment_ids_BP, max_length, prefix_lm):
    b = tokens_BP.shape[0]
    cache = decoding.init_cache(model, jnp.zeros((b, max_length), jnp.int32))
    logits_BV, cache = decoding.decoder_prefill(model, params, cache, tokens_BP, segment_ids_BP,
                                                prefix_lm=prefix_lm)
    return logits_BV, cache, jnp.sum(segment_ids_BP, axis=1, dtype=jnp.int32)


def _decoder_dims(max_length: int):
    """(b, q + 1): a decoder's prompt width is q + 1 for a symbol q >= 1, the tokens that fill
    the cache before the last one runs alone (decoding.decoder_prefill). Spelled so because
    jax.export cannot prove b * (p - 1) >= 0 for a width symbol p >= 2 when the first call
    reshapes its [b, p - 1] tokens to rows."""
    b, q = jax_export.symbolic_shape("b, q", constraints=(f"q <= {max_length - 1}",))
    return b, q + 1, [f"2 <= P = q + 1 <= max_length = {max_length}",
                      "new tokens <= max_length - P"]


def _encoder_decoder_prefill(model, params, encoder_BS, segment_ids_BS, max_length, prefix_lm):
    b = encoder_BS.shape[0]
    cache = decoding.init_cache(model, jnp.zeros(encoder_BS.shape, jnp.int32),
                                jnp.zeros((b, max_length), jnp.int32))
    logits_BV, cache = decoding.encoder_decoder_prefill(model, params, cache, encoder_BS,
                                                        segment_ids_BS, start_id=0)
    return logits_BV, cache, jnp.ones((b,), jnp.int32)  # the start token sat at 0


# model family kind -> its exported layout; kinds absent here are refused (encoders)
LAYOUTS = {
    "decoder": _Layout(
        prompt=("tokens_BP", "segment_ids_BP"), padding="left", min_width=2,
        cache_holds_prompt=True, continues_prompt=True, prefill=_decoder_prefill,
        step=decoding.decoder_step, dims=_decoder_dims,
        decode_dims=lambda: (*jax_export.symbolic_shape("b"), 2)),
    "encoder_decoder": _Layout(
        prompt=("encoder_BS", "encoder_segment_ids_BS"), padding="right", min_width=1,
        cache_holds_prompt=False, continues_prompt=False, prefill=_encoder_decoder_prefill,
        step=decoding.encoder_decoder_step,
        dims=lambda n: (*jax_export.symbolic_shape("b, s"),
                        [f"new tokens <= max_length = {n}"]),
        decode_dims=lambda: jax_export.symbolic_shape("b, s")),
}


def flatten(tree) -> dict[str, Any]:
    """{"a/b/c": leaf} of a nested dict (unflatten inverts it)."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict(flat, sep="/")


def _stored(x) -> np.ndarray:
    x = np.asarray(jax.device_get(x))
    return x.astype(_STORED.get(x.dtype, x.dtype))


def _spec(x) -> dict:
    return {"shape": [d if isinstance(d, int) else str(d) for d in x.shape],
            "dtype": str(np.dtype(x.dtype))}


def _check_max_length(kind: str, model_config, max_length: int | None) -> int:
    """The cache's length: `max_length`, by default the model's training length; decoders with
    learned positions cannot go past their position table."""
    limit = server.DecoderKind.position_limit(model_config) if kind == "decoder" else None
    if max_length is None:
        return limit or model_config.seq_len
    if max_length < 2 or (limit is not None and max_length > limit):
        most = f"at most model.max_positions = {limit}" if limit else "any length"
        raise CannotExport(f"--max_length={max_length}: the cache needs >= 2 slots (a prompt "
                           f"token and a new one) and this {model_config.family} model takes "
                           f"{most}; pass a value in that range")
    return max_length


def _functions(layout: _Layout, model, dtypes: dict, max_length: int, prefix_lm: bool):
    """(prefill, decode) over flat weights W (stored dtypes) and a flat cache C."""
    def params_of(weights):
        return unflatten({k: w.astype(dtypes[k]) for k, w in weights.items()})

    def prefill(weights, tokens, segment_ids):
        logits_BV, cache, position_B = layout.prefill(model, params_of(weights), tokens,
                                                      segment_ids, max_length, prefix_lm)
        return logits_BV.astype(jnp.float32), {**flatten(cache), POSITION: position_B}

    def decode(weights, cache, token_B):
        position_B = cache[POSITION]
        model_cache = unflatten({k: v for k, v in cache.items() if k != POSITION})
        logits_BV, model_cache = layout.step(model, params_of(weights), model_cache, token_B,
                                             position_B)
        return (logits_BV.astype(jnp.float32),
                {**flatten(model_cache), POSITION: position_B + 1})

    return prefill, decode


def _signature(names, args, logits_spec) -> dict:
    """A function's inputs and outputs for the manifest; W and C by name (their entries are
    under "weights" and "cache")."""
    return {"inputs": [{"name": n} if a is None else {"name": n, **_spec(a)}
                       for n, a in zip(names, args)],
            "outputs": [{"name": "logits_BV", **_spec(logits_spec)}, {"name": "C"}]}


def _export(layout: _Layout, prefill, decode, weights: dict, max_length: int, platforms):
    """({name: jax.export.Exported}, {name: signature}, cache spec, shape rules in words)."""
    b, width, rules = layout.dims(max_length)
    w_spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in weights.items()}
    prompt_spec = jax.ShapeDtypeStruct((b, width), jnp.int32)
    decode_b, decode_width = layout.decode_dims()
    decode_prompt = jax.ShapeDtypeStruct((decode_b, decode_width), jnp.int32)
    token_spec = jax.ShapeDtypeStruct((decode_b,), jnp.int32)
    with kernels.xla_only():  # no kernel's custom call in what is traced
        logits_spec, _ = jax.eval_shape(prefill, w_spec, prompt_spec, prompt_spec)
        _, cache_spec = jax.eval_shape(prefill, w_spec, decode_prompt, decode_prompt)
        exported = {
            "prefill": jax_export.export(jax.jit(prefill), platforms=platforms)(
                w_spec, prompt_spec, prompt_spec),
            "decode": jax_export.export(jax.jit(decode), platforms=platforms)(
                w_spec, cache_spec, token_spec)}
    signatures = {
        "prefill": _signature(("W", *layout.prompt), (None, prompt_spec, prompt_spec),
                              logits_spec),
        "decode": _signature(("W", "C", "token_B"), (None, None, token_spec), logits_spec)}
    return exported, signatures, cache_spec, rules


def export_stablehlo(source: str, output: str, *, step: int | None = None,
                     max_length: int | None = None, platforms=PLATFORMS,
                     tokenizer_path: str | None = None) -> Result:
    """Writes the artifact of the module docstring for a run's latest (or `step`) checkpoint,
    a checkpoint directory or an export (float or quantized) to the new directory `output`.
    CannotExport for an encoder family or a max_length the model cannot take;
    FileExistsError when `output` exists."""
    output = os.path.abspath(os.path.expanduser(output))
    if os.path.exists(output):
        raise FileExistsError(f"--output={output} exists; choose a new directory")
    config_dict, _ = checkpoint.read_source(
        source if step is None else os.path.join(checkpoint.checkpoint_dir(source), str(step)))
    family = config_dict["model"]["family"]
    kind = models.get_family(family).kind
    if kind not in LAYOUTS:
        raise CannotExport(f"model.family = {family!r} is an {kind} model, which has no "
                           "StableHLO export (nothing to generate); it exports decoders "
                           "(gpt2, llama, prefix-LM) and encoder-decoders (t5, t5_1_1)")
    engine, params, tokenizer, step = load_run(source, step, tokenizer_path)
    layout = LAYOUTS[kind]
    max_length = _check_max_length(kind, engine.model_config, max_length)
    model, params = decoding.unrolled(engine.model, jax.device_get(params))
    model = model.clone(cfg=dataclasses.replace(model.cfg, attention_impl="xla"))
    params_flat = flatten(params)
    dtypes = {k: jnp.dtype(v.dtype) for k, v in params_flat.items()}
    weights = {k: _stored(v) for k, v in params_flat.items()}
    prefix_lm = engine.config.objective == "prefix_lm"
    exported, signatures, cache_spec, rules = _export(
        layout, *_functions(layout, model, dtypes, max_length, prefix_lm), weights, max_length,
        platforms)
    tokenizer_kind = _tokenizer_kind(engine.config.tokenizer.path)
    manifest = {
        "format": FORMAT, "version": VERSION, "family": family, "kind": kind,
        "prefix_lm": prefix_lm, "source": os.path.abspath(source), "step": step,
        "quantization": guard.quantization_of(config_dict), "max_length": max_length,
        "vocab_size": engine.model_config.vocab_size, "shape_rules": rules,
        "platforms": list(platforms), "jax_version": jax.__version__,
        "prompt": _prompt(layout, tokenizer),
        "tokenizer": {"file": _tokenizer_name(tokenizer_kind), "kind": tokenizer_kind,
                      **{f"{n}_id": getattr(tokenizer, f"{n}_id") for n in SPECIALS}},
        "weights": {"file": WEIGHTS,
                    "arrays": {k: {**_spec(w), "model_dtype": str(dtypes[k])}
                               for k, w in weights.items()}},
        "cache": {k: _spec(v) for k, v in cache_spec.items()},
        "functions": {name: {"file": f"{name}.jax_export", **sig}
                      for name, sig in signatures.items()},
    }
    _write(output, exported, weights, manifest, engine.config.tokenizer.path)
    return Result(output, step, family, max_length, sum(w.nbytes for w in weights.values()))


def _prompt(layout: _Layout, tokenizer) -> dict:
    """How a reader turns a prompt into a row: the ids around the tokenizer's (decoders:
    server.DecoderKind's; encoder-decoders: [bos if any] + pieces + [eos],
    texts.encoder_prompt_ids), the padding and the cache's room."""
    if layout.continues_prompt:
        prefix, suffix = list(tokenizer.prefix_ids), []
    else:
        prefix = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
        suffix = [tokenizer.eos_id]
    return {"prefix_ids": prefix, "suffix_ids": suffix, "empty_ids": [tokenizer.eos_id],
            "padding": layout.padding, "pad_id": 0, "min_width": layout.min_width,
            "cache_holds_prompt": layout.cache_holds_prompt,
            "continues_prompt": layout.continues_prompt}


def _tokenizer_kind(path: str) -> str:
    with open(path, "rb") as f:
        return tokenizer_files.kind_of(f.read(tokenizer_files.HEAD_BYTES)).name


def _tokenizer_name(kind: str) -> str:
    return "tokenizer.json" if kind == "hf_tokenizers" else "tokenizer.model"


def _write(output: str, exported: dict, weights: dict, manifest: dict, tokenizer_path: str):
    """Writes everything into a temporary sibling directory, then renames it to `output`, so
    a failure leaves no half-written artifact."""
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".stablehlo-", dir=parent)
    try:
        for name, exp in exported.items():
            with open(os.path.join(tmp, f"{name}.jax_export"), "wb") as f:
                f.write(exp.serialize())
        np.savez(os.path.join(tmp, WEIGHTS), **weights)
        shutil.copyfile(tokenizer_path, os.path.join(tmp, manifest["tokenizer"]["file"]))
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
