"""Hugging Face directory <-> fmjax params-only checkpoint, one tensor at a time.

import: config.json -> fmjax config (the family converter refuses what it cannot represent)
-> the model's abstract params (jax.eval_shape: nothing allocated) -> every leaf a LazyLeaf
reading its HF tensor (slice) when orbax writes it -> an export that `fmjax.finetune
--config.init_from=` and `fmjax.generate --workdir=` read. A SentencePiece model in the
directory (`Converter.tokenizer_files`: Llama's tokenizer.model, T5's spiece.model) becomes the
checkpoint's tokenizer, else its tokenizer.json (GPT-2's BPE, BERT's WordPiece, Llama 3), with
the special ids its tokenizer_config.json names (fmjax/data/hf_tokenizer.py); a directory with
neither gives a checkpoint without one (b""), whose readers need --config.tokenizer.path
(fmjax.finetune) / --tokenizer (fmjax.generate, fmjax.evaluate). Embedding rows past
the SentencePiece pieces (T5: 32,128 rows, 32,000 pieces) become config.tokenizer.extra_ids.
Tied copies the checkpoint stores (T5's encoder/decoder.embed_tokens) are checked equal to
the tensor they copy; heads it lacks (BertForMaskedLM's pooler) are initialised and named.

export: the reverse, into config.json + model.safetensors (sharded past `max_shard_bytes`)
that transformers' from_pretrained loads, plus the checkpoint's tokenizer (a SentencePiece
model, or tokenizer.json + tokenizer_config.json).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import config as config_lib, models
from fmjax.data import hf_tokenizer
from fmjax.training import state as state_lib
from fmjax.hf import mapping, params_io
from fmjax.quantization import guard as quantization_guard
from fmjax.hf.safetensors_io import HFDir, TensorSpec, write_model

PARAM_DTYPES = ("float32", "bfloat16", "float16")
HF_TOKENIZER_FILE = "tokenizer.json"  # the `tokenizers` file, kept when no SentencePiece model is
HF_TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")  # name the specials


@dataclasses.dataclass
class ImportResult:
    path: str
    config: object  # the fmjax ConfigDict saved with the checkpoint
    num_params: int
    param_bytes: int
    largest_block_bytes: int  # the most host memory one LazyLeaf block needs
    has_tokenizer: bool
    fresh: tuple[str, ...] = ()  # param groups the checkpoint lacked, initialised (mapping.Fresh)


def _leaf_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {jax.tree_util.keystr(k, simple=True, separator="/"): tuple(x.shape)
            for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _storage_dtype(hf: HFDir) -> str:
    """The dtype of the checkpoint's largest tensor, as a config.model.param_dtype."""
    largest = max(hf.tensors.values(), key=lambda t: t.nbytes)
    name = jnp.dtype(largest.dtype).name
    return name if name in PARAM_DTYPES else "float32"


def _first_id(value) -> int:
    """An HF token id field (int, list of ints or None) as an fmjax id (-1 = none)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return -1 if value is None else int(value)


def _tokenizer_config(hf: HFDir) -> dict:
    return hf_tokenizer.read_json(os.path.join(hf.path, "tokenizer_config.json"))


def _tokenizer(converter: mapping.Converter, hf: HFDir, config, log) -> bytes:
    """The checkpoint's tokenizer file with config.tokenizer's ids taken from it: the
    directory's SentencePiece model, else its tokenizer.json (ids from tokenizer_config.json /
    special_tokens_map.json, else config.json), else none (b"", ids from config.json)."""
    found = [os.path.join(hf.path, name) for name in converter.tokenizer_files
             if os.path.isfile(os.path.join(hf.path, name))]
    t = config.tokenizer
    if not found:
        return _tokenizer_json(hf, config, log)
    import sentencepiece as spm
    with open(found[0], "rb") as f:
        data = f.read()
    sp = spm.SentencePieceProcessor(model_proto=data)
    t.pad_id, t.bos_id, t.eos_id, t.unk_id = sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()
    pieces, rows = sp.get_piece_size(), config.model.vocab_size
    if pieces < rows:  # ids after the pieces (T5: 100 sentinels + 28 padding rows)
        t.extra_ids = rows - pieces
        sentinels = min(t.extra_ids, _tokenizer_config(hf).get("extra_ids",
                                                               converter.default_sentinels))
        config.span_corruption.num_sentinels = sentinels
        log(f"NOTE: {found[0]} has {pieces} pieces and the model {rows} embedding rows: "
            f"config.tokenizer.extra_ids = {t.extra_ids}, of which "
            f"span_corruption.num_sentinels = {sentinels} (<extra_id_k> = {pieces + sentinels - 1} - k)")
    elif pieces > rows:
        log(f"WARNING: {found[0]} has {pieces} pieces but the model only {rows} embedding "
            "rows; fmjax.finetune refuses the pair (model.vocab_size - tokenizer.extra_ids "
            "must equal the pieces)")
    return data


def _tokenizer_json(hf: HFDir, config, log) -> bytes:
    t = config.tokenizer
    path = os.path.join(hf.path, HF_TOKENIZER_FILE)
    if not os.path.isfile(path):
        t.pad_id, t.bos_id = _first_id(hf.config.get("pad_token_id")), _first_id(
            hf.config.get("bos_token_id"))
        t.eos_id, t.unk_id = _first_id(hf.config.get("eos_token_id")), -1
        log(f"NOTE: {hf.path} has no tokenizer file (tokenizer.json or a SentencePiece model), "
            "so the checkpoint stores no tokenizer. Pass the model's tokenizer file "
            "--config.tokenizer.path=... (with the matching --config.tokenizer.*_id) to "
            "fmjax.finetune, --tokenizer=... to fmjax.generate and fmjax.evaluate.")
        return b""
    with open(path, "rb") as f:
        data = f.read()
    hf_files = {name: hf_tokenizer.read_json(os.path.join(hf.path, name))
                for name in HF_TOKENIZER_CONFIGS}
    for name, value in hf_tokenizer.special_ids(data, hf_files, hf.config).items():
        t[name] = value
    return data


def _check_copies(hf: HFDir, copies: dict[str, str], family: str,
                  chunk_bytes: int = 64 * 2**20) -> None:
    """Each stored tied copy equals its original bitwise, compared a block of rows at a time."""
    for copy, original in copies.items():
        a, b = hf.tensors[copy], hf.tensors[original]
        same = a.shape == b.shape and a.dtype == b.dtype
        if same and a.shape:
            step = max(1, chunk_bytes * a.shape[0] // max(a.nbytes, 1))
            same = all(np.array_equal(hf.read(copy, 0, i, i + step),
                                      hf.read(original, 0, i, i + step))
                       for i in range(0, a.shape[0], step))
        elif same:
            same = np.array_equal(hf.read(copy), hf.read(original))
        if not same:
            raise mapping.MappingError(
                f"{copy} differs from {original}: fmjax's {family} holds them as one tensor "
                f"(tied), as the checkpoint's config.json says HF does (fmjax/hf/{family}.py); "
                "it cannot represent this checkpoint, so nothing was converted")


def hf_to_config(converter: mapping.Converter, hf: HFDir, *, scan_layers: bool,
                 param_dtype: str):
    """The fmjax config of an HF directory (model fields from its converter)."""
    model_type = hf.config.get("model_type")
    if model_type not in converter.model_types:
        raise mapping.UnsupportedHFConfig(
            f"{hf.path}/config.json: model_type = {model_type!r}, but --family="
            f"{converter.family} reads {list(converter.model_types)}; choose the family "
            "matching the checkpoint")
    config = config_lib.base_config()
    config.model.family = converter.family
    config.objective = models.get_family(converter.family).pretrain_objective
    try:
        fields = converter.config_from_hf(hf.config)
    except mapping.UnsupportedHFConfig as e:
        raise mapping.UnsupportedHFConfig(f"{hf.path}/{e}") from None
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = config if parents else config.model
        for name in parents:
            node = node[name]
        node[leaf] = value
    param_dtype = _storage_dtype(hf) if param_dtype == "auto" else param_dtype
    if param_dtype not in PARAM_DTYPES:
        raise config_lib.ConfigError(f"--param_dtype={param_dtype}: use auto or one of "
                                     f"{', '.join(PARAM_DTYPES)}")
    config.model.param_dtype = param_dtype
    config.model.dtype = "float32" if param_dtype == "float32" else "bfloat16"
    config.model.scan_layers = scan_layers
    config.model.vocab_multiple = 1
    config.model.dropout = 0.0  # a runtime choice: fine-tune configs set their own
    config.tokenizer.path = ""  # the checkpoint carries its tokenizer (if any)
    return config


def import_hf(family: str, hf_dir: str, output: str, *, scan_layers: bool = True,
              param_dtype: str = "auto", log=print) -> ImportResult:
    """Writes the fmjax params-only checkpoint `output` from the HF directory `hf_dir`."""
    output = os.path.abspath(os.path.expanduser(output))
    if os.path.exists(output):
        raise FileExistsError(f"--output={output} exists; choose a new directory")
    converter = mapping.get(family)
    hf = HFDir(hf_dir)
    config = hf_to_config(converter, hf, scan_layers=scan_layers, param_dtype=param_dtype)
    tokenizer_bytes = _tokenizer(converter, hf, config, log)
    model, cfg = models.build(config)
    abstract, _ = state_lib.abstract_params(model, cfg.seq_len)
    shapes = _leaf_shapes(abstract)
    plan = mapping.plan(converter.links(cfg), shapes, scan_layers=cfg.scan_layers,
                        vocab_size=cfg.vocab_size, family=family)
    matched = mapping.match_hf_names(plan, list(hf.tensors), converter, cfg)
    names = matched.names
    for name, shape in plan.hf_shapes.items():
        stored = hf.tensors[names[name]].shape if name in names else shape
        if tuple(stored) != shape:
            raise mapping.MappingError(f"{names[name]}: the checkpoint holds {tuple(stored)}, "
                                       f"its config.json implies {shape}")
    _check_copies(hf, matched.copies, family)
    if matched.fresh_groups:
        log(f"NOTE: {hf.path} has no {', '.join(matched.fresh_groups)} weights: initialised "
            f"as transformers does (seed {config.seed}); train them before relying on them")
    dtype = np.dtype(jnp.dtype(cfg.param_dtype))

    def load(part: mapping.Placement) -> np.ndarray:
        if part.hf_name not in names:  # a Fresh group the checkpoint lacks
            x = part.link.fresh.value(part.fm_path, part.layer, part.fm_shape,
                                      std=cfg.init_std, seed=config.seed)
            return x.astype(dtype)
        x = hf.read(names[part.hf_name], part.link.pack_axis, part.start, part.stop)
        return part.link.to_fm(x, part.fm_shape, cfg.vocab_size).astype(dtype, copy=False)

    def lazy(path: str) -> params_io.LazyLeaf:
        parts = sorted(plan.by_fm[path], key=lambda p: (-1 if p.layer is None else p.layer,
                                                        p.expert or 0))
        per_block = parts[0].link.experts
        if per_block:  # a mixture's experts: one HF tensor each, stacked into the block
            blocks = [parts[i:i + per_block] for i in range(0, len(parts), per_block)]
            return params_io.LazyLeaf(shapes[path], dtype, parts[0].layer is not None,
                                      lambda i: np.stack([load(p) for p in blocks[i]]))
        return params_io.LazyLeaf(shapes[path], dtype, parts[0].layer is not None,
                                  lambda i: load(parts[i]))

    leaves = {path: lazy(path) for path in shapes}
    params_io.export_lazy(output, _nest(leaves), config.to_dict(), tokenizer_bytes, log=log)
    return ImportResult(
        path=output, config=config, num_params=sum(math.prod(s) for s in shapes.values()),
        param_bytes=sum(leaf.nbytes for leaf in leaves.values()),
        largest_block_bytes=max(leaf.nbytes // leaf.blocks for leaf in leaves.values()),
        has_tokenizer=bool(tokenizer_bytes), fresh=matched.fresh_groups)


def _write_tokenizer(directory: str, data: bytes, converter: mapping.Converter,
                     tokenizer) -> list[str]:
    """The checkpoint's tokenizer file under the name HF gives its kind (a tokenizer.json
    with a tokenizer_config.json naming its special tokens); the names written."""
    if not hf_tokenizer.is_tokenizer_json(data[:64]):
        name = converter.tokenizer_files[0]
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        settings = _sentencepiece_config(data, converter.sentencepiece_class, tokenizer)
        if settings is None:
            return [name]
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(settings, f, indent=2, sort_keys=True)
        return [name, "tokenizer_config.json"]
    with open(os.path.join(directory, HF_TOKENIZER_FILE), "wb") as f:
        f.write(data)
    ids = {name: tokenizer[name] for name in hf_tokenizer.HF_TOKEN_KEYS}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(hf_tokenizer.token_names(data, ids), f, indent=2, sort_keys=True)
    return [HF_TOKENIZER_FILE, "tokenizer_config.json"]


def _sentencepiece_config(data: bytes, tokenizer_class: str | None, tokenizer) -> dict | None:
    """tokenizer_config.json for an fmjax SentencePiece model: transformers' slow `legacy`
    reading of the model (no prefix space added, spaces kept on decode), bos first when fmjax
    starts documents with it, and the special tokens by their pieces. None without a class
    (the family's own) or for bytes that are not a SentencePiece model."""
    import sentencepiece as spm
    if tokenizer_class is None:
        return None
    try:
        sp = spm.SentencePieceProcessor(model_proto=data)
    except RuntimeError:
        return None
    out = {"tokenizer_class": tokenizer_class, "legacy": True, "add_prefix_space": False,
           "add_bos_token": tokenizer.bos_id >= 0, "add_eos_token": False,
           "clean_up_tokenization_spaces": False}
    for name in ("bos", "eos", "unk", "pad"):
        token_id = tokenizer[f"{name}_id"]
        if 0 <= token_id < sp.get_piece_size():
            out[f"{name}_token"] = sp.id_to_piece(token_id)
    return out


def _hf_config(converter: mapping.Converter, cfg, tokenizer, dtype: str) -> dict:
    hf = converter.config_to_hf(cfg)
    ids = {"pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id,
           "eos_token_id": tokenizer.eos_id}
    hf.update({k: (v if v >= 0 else None) for k, v in ids.items()})
    hf["dtype"] = dtype
    return hf


def export_hf(family: str, source: str, output: str, *, dtype: str = "auto",
              max_shard_bytes: int = 5 * 2**30, log=print) -> list[str]:
    """Writes config.json + safetensors (+ tokenizer.model) of the fmjax checkpoint `source`
    (a workdir, one of its step directories, or an export) to the new directory `output`.
    Returns the files written."""
    output = os.path.abspath(os.path.expanduser(output))
    if os.path.exists(output):
        raise FileExistsError(f"--output={output} exists; choose a new directory")
    converter = mapping.get(family)
    reader = params_io.LeafReader(source)
    quantization_guard.refuse(  # Hugging Face checkpoints here are float; no silent dequantize
        reader.config_dict, path=source, field="--workdir_or_checkpoint", tool="export to "
        "Hugging Face", fix="export the float checkpoint it was quantized from ({source})")
    config = config_lib.from_json_dict(reader.config_dict)
    if config.model.family != family:
        raise config_lib.ConfigError(
            f"{reader.directory} holds a {config.model.family!r} model (config.model.family); "
            f"use --family={config.model.family}")
    if config.lora.rank > 0:
        raise config_lib.ConfigError(
            f"{reader.directory}: config.lora.rank = {config.lora.rank}: merge the adapters "
            "first with python -m fmjax.export (it folds them into the kernels)")
    _, cfg = models.build(config)
    plan = mapping.plan(converter.links(cfg), reader.shapes, scan_layers=cfg.scan_layers,
                        vocab_size=cfg.vocab_size, family=family)
    if dtype == "auto":
        largest = max(reader.shapes, key=lambda k: math.prod(reader.shapes[k]))
        dtype = jnp.dtype(reader.dtypes[largest]).name
    if dtype not in PARAM_DTYPES:
        raise config_lib.ConfigError(f"--dtype={dtype}: use auto or one of "
                                     f"{', '.join(PARAM_DTYPES)}")
    out_dtype = np.dtype(jnp.dtype(dtype))

    last_read = {}  # one block: a mixture's experts are E tensors of the same block

    def read(p: mapping.Placement) -> np.ndarray:
        if (p.fm_path, p.layer) not in last_read:
            last_read.clear()
            last_read[p.fm_path, p.layer] = reader.read(p.fm_path, p.layer)
        value = last_read[p.fm_path, p.layer]
        return value if p.expert is None else value[p.expert]

    def produce(hf_name: str) -> np.ndarray:
        parts = plan.by_hf[hf_name]
        values = [p.link.to_hf(read(p), cfg.vocab_size) for p in parts]
        return np.concatenate(values, axis=parts[0].link.pack_axis).astype(out_dtype)

    # in declaration order a stacked leaf's blocks are read in order, so reading them also
    # checksums the leaf (reader.verify below)
    specs = [TensorSpec(name, out_dtype, shape, lambda name=name: produce(name))
             for name, shape in plan.hf_shapes.items()]

    tmp = output + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    files = write_model(tmp, specs, max_shard_bytes=max_shard_bytes)
    reader.verify()  # before anything is at `output`
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(_hf_config(converter, cfg, config.tokenizer, dtype), f, indent=2,
                  sort_keys=True)
    files.append("config.json")
    if reader.tokenizer_bytes:
        files += _write_tokenizer(tmp, reader.tokenizer_bytes, converter, config.tokenizer)
    os.replace(tmp, output)
    log(f"wrote {len(plan.hf_shapes)} tensors ({dtype}) to {output}: {', '.join(files)}")
    return files
