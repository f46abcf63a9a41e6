"""fmjax.generation.stablehlo_export and its reader, examples/stablehlo_generate.py.

The reader runs in a child process where fmjax (and flax, optax, orbax) cannot be imported,
and its greedy token ids equal server.Generator's (what `fmjax.generate --temperature=0`
prints) for prompts of different lengths at two batch sizes of the same artifact: a GPT-2 with
a byte-level BPE tokenizer.json (its eos set to a token the model emits, so rows stop early),
its int4 quantization (integers + scales, dequantized inside the exported functions), a
prefix-LM grouped-query Llama with bfloat16 params and a SentencePiece model, and a T5. The artifact's
files, manifest and symbolic shapes are checked, and a params-only export of a quantized
checkpoint is refused.
"""
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import models
from fmjax.data import sp_tokenizer
from fmjax.generation import server, stablehlo_export
from fmjax.hf import tiny_models
from fmjax.quantization import guard, ptq
from fmjax.training import checkpoint, params_export
from tests.helpers import ROOT, cpu_env, tiny_config

pytestmark = pytest.mark.slow  # about a minute on 2 cores: 4 models exported, run twice each

READER = os.path.join(ROOT, "examples", "stablehlo_generate.py")
PROMPTS = ["def wrap(text, width=70):\n    return", "import", "class TextWrapper:\n    def", "",
           "x = [1, 2,"]
MAX_NEW = 10
BATCH_SIZES = (3, 5)  # 5 prompts: batches of 3 and 2 rows, then one of 5
BLOCKED = ("fmjax", "flax", "optax", "orbax", "tests")  # unimportable in the reader's process


def random_checkpoint(path: str, config, tokenizer_bytes: bytes, seed: int = 0) -> str:
    """An export of `config`'s model with every weight N(0, 0.2) and norm scales 1 + N(0, 0.2)
    (as tiny_models.randomize): logits far apart, so greedy picks are not near-ties that a
    different but equally valid XLA program could flip."""
    model, cfg = models.build(config)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                 jnp.zeros((1, cfg.seq_len), jnp.int32)))
    rng = np.random.default_rng(seed)

    def draw(key_path, leaf):
        base = 1.0 if jax.tree_util.keystr(key_path).endswith("['scale']") else 0.0
        return (base + 0.2 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract["params"]))
    return checkpoint.export_params(path, params, config.to_dict(), tokenizer_bytes)


def sentencepiece_config(root, family: str, **model):
    sp = sp_tokenizer.train_sentencepiece(tiny_models.training_texts(), vocab_size=400,
                                          output_path=str(root / "sp.model"))
    config = tiny_config(family, vocab_size=400, seq_len=64, **model)
    config.tokenizer.path = sp
    with open(sp, "rb") as f:
        return config, f.read()


def bpe_gpt2_config(root, eos_id: int):
    """A GPT-2 config with a byte-level BPE tokenizer.json (no prefix ids, like GPT-2's) whose
    special ids are <|endoftext|> (0) but eos, `eos_id`."""
    tok = tiny_models.byte_level_bpe(384, tiny_models.GPT2_SPECIALS)
    path = str(root / "tokenizer.json")
    tok.save(path)
    config = tiny_config("gpt2", vocab_size=tok.get_vocab_size(), seq_len=64)
    config.tokenizer.path = path
    config.tokenizer.pad_id, config.tokenizer.bos_id, config.tokenizer.unk_id = -1, 0, 0
    config.tokenizer.eos_id = eos_id
    with open(path, "rb") as f:
        return config, f.read()


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """{name: (checkpoint, artifact, Generator's greedy token ids per prompt, its texts)}."""
    root = tmp_path_factory.mktemp("stablehlo")
    checkpoints = {}
    # GPT-2 + tokenizer.json; eos = the 4th token the model picks for prompt 0, so that row
    # stops early and others may not
    config, data = bpe_gpt2_config(root, eos_id=0)
    probe = random_checkpoint(str(root / "probe"), config, data)
    eos = server.Generator.load(probe).generate(  # (the shapes compiled again below)
        PROMPTS, max_new_tokens=MAX_NEW, ignore_eos=True)[0][0].token_ids[3]
    config, data = bpe_gpt2_config(root, eos_id=eos)
    checkpoints["gpt2"] = random_checkpoint(str(root / "gpt2"), config, data)
    checkpoints["gpt2_int4"] = ptq.quantize_checkpoint(checkpoints["gpt2"], str(root / "int4"),
                                                       "int4", 32).path
    config, data = sentencepiece_config(root, "llama", n_kv_heads=2)
    config.model.param_dtype = "bfloat16"
    config.objective = "prefix_lm"  # the prompt is one bidirectional prefix
    checkpoints["llama"] = random_checkpoint(str(root / "llama"), config, data)
    config, data = sentencepiece_config(root, "t5")
    checkpoints["t5"] = random_checkpoint(str(root / "t5"), config, data)
    out = {}
    for name, ckpt in checkpoints.items():
        artifact = stablehlo_export.export_stablehlo(ckpt, str(root / f"{name}_hlo"),
                                                     platforms=("cpu",)).path
        generator = server.Generator.load(ckpt)
        completions = generator.generate(PROMPTS, max_new_tokens=MAX_NEW)
        head = PROMPTS if generator.continues_prompt else [""] * len(PROMPTS)
        out[name] = (ckpt, artifact, [list(c.token_ids) for (c,) in completions],
                     [h + c.text for h, (c,) in zip(head, completions)])
    return out


CHILD = """
import contextlib, importlib.abc, io, json, runpy, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this process")
        return None

sys.meta_path.insert(0, Blocker())
try:
    import fmjax
except ImportError:
    pass
else:
    raise SystemExit("fmjax is importable")
reader = runpy.run_path(READER)
out = {}
for name, path in ARTIFACTS.items():
    artifact = reader["Artifact"](path)
    out[name] = {str(size): reader["generate"](artifact, PROMPTS, MAX_NEW, size)
                 for size in BATCH_SIZES}
    printed = io.StringIO()  # the command line, printing texts
    with contextlib.redirect_stdout(printed):
        reader["main"]([path, *[f"--prompt={p}" for p in PROMPTS],
                        f"--max_new_tokens={MAX_NEW}"])
    out[name]["printed"] = printed.getvalue()
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
print(json.dumps({"out": out, "blocked_loaded": loaded}))
"""


@pytest.fixture(scope="module")
def read(cases, tmp_path_factory):
    """What the reader generated for each case, in a process where fmjax cannot be imported."""
    setup = (f"BLOCKED = {BLOCKED!r}\nREADER = {READER!r}\nPROMPTS = {PROMPTS!r}\n"
             f"MAX_NEW = {MAX_NEW}\nBATCH_SIZES = {BATCH_SIZES!r}\n"
             f"ARTIFACTS = {({name: case[1] for name, case in cases.items()})!r}\n")
    env = cpu_env(1)
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", setup + CHILD], env=env,
                            cwd=tmp_path_factory.mktemp("elsewhere"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["blocked_loaded"] == []
    return got["out"]


@pytest.mark.parametrize("name", ["gpt2", "gpt2_int4", "llama", "t5"])
def test_reader_without_fmjax_equals_the_generator_at_two_batch_sizes(cases, read, name):
    _, _, want, texts = cases[name]
    for size in map(str, BATCH_SIZES):
        rows = read[name][size]
        assert [row["prompt"] for row in rows] == PROMPTS
        assert [row["token_ids"] for row in rows] == want, size
        assert [row["finish_reason"] for row in rows] == [
            "length" if len(ids) == MAX_NEW else "stop" for ids in want]
    assert read[name]["printed"] == "".join(
        f"--- {'length' if len(ids) == MAX_NEW else 'stop'} ---\n{text}\n"
        for ids, text in zip(want, texts))


def test_the_cases_cover_early_stops_and_prompt_widths(cases):
    """The comparison above means something: gpt2's rows stop at different steps (eos), and
    the prompts' token counts differ, so rows are padded."""
    _, _, want, _ = cases["gpt2"]
    assert any(len(ids) < MAX_NEW for ids in want) and any(len(ids) == MAX_NEW for ids in want)
    for name in ("llama", "t5"):  # every prompt gets its own continuation
        assert len({tuple(ids) for ids in cases[name][2]}) == len(PROMPTS)
    generator = server.Generator.load(cases["gpt2"][0])
    widths = {len(server.DecoderKind.prompt_ids(generator.tokenizer, p)) for p in PROMPTS}
    assert len(widths) == len(PROMPTS)


def test_artifact_files_manifest_and_symbolic_shapes(cases):
    _, artifact, _, _ = cases["llama"]
    assert sorted(os.listdir(artifact)) == ["decode.jax_export", "manifest.json",
                                            "prefill.jax_export", "tokenizer.model",
                                            "weights.npz"]
    with open(os.path.join(artifact, "manifest.json")) as f:
        manifest = json.load(f)
    assert (manifest["format"], manifest["kind"], manifest["max_length"],
            manifest["prefix_lm"]) == ("fmjax-stablehlo", "decoder", 64, True)
    assert manifest["prompt"]["prefix_ids"] == [1] and manifest["tokenizer"]["eos_id"] == 2
    with np.load(os.path.join(artifact, "weights.npz"), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()} == {
        k: {"shape": v["shape"], "dtype": v["dtype"]} for k, v in
        manifest["weights"]["arrays"].items()}
    # layers unrolled; bfloat16 params stored as float32 (exactly: bf16 -> f32 -> bf16)
    assert "layer_1/attn/key/kernel" in arrays and "layers" not in " ".join(arrays)
    kernel = arrays["layer_0/attn/key/kernel"]
    assert kernel.dtype == np.float32 and kernel.shape == (32, 2, 4)
    assert manifest["weights"]["arrays"]["layer_0/attn/key/kernel"]["model_dtype"] == "bfloat16"
    np.testing.assert_array_equal(kernel.astype(jnp.bfloat16).astype(np.float32), kernel)
    assert manifest["cache"]["layer_0/attn/cached_key"]["shape"] == ["b", 2, 64, 4]  # [B, G, S, K]
    prefill, decode = (jax.export.deserialize(bytearray(open(
        os.path.join(artifact, f"{n}.jax_export"), "rb").read())) for n in ("prefill", "decode"))
    assert [str(d) for d in prefill.in_avals[-1].shape] == ["b", "q + 1"]
    assert [str(d) for d in decode.in_avals[-1].shape] == ["b"]
    assert [str(d) for d in prefill.out_avals[0].shape] == ["b", "400"]
    for exported in (prefill, decode):
        assert exported.platforms == ("cpu",)
        targets = set(re.findall(r"custom_call @(\w+)", exported.mlir_module()))
        assert not {t for t in targets if "fmjax" in t}, targets  # no kernel custom call


def test_t5_prefill_and_decode_are_polymorphic_in_the_encoder_width(cases):
    _, artifact, _, _ = cases["t5"]
    with open(os.path.join(artifact, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["prompt"] == {"prefix_ids": [1], "suffix_ids": [2], "empty_ids": [2],
                                  "padding": "right", "pad_id": 0, "min_width": 1,
                                  "cache_holds_prompt": False, "continues_prompt": False}
    cross = [v["shape"] for k, v in manifest["cache"].items() if k.endswith("cross_key")]
    assert cross and all(shape[:2] == ["b", "s"] for shape in cross)


def test_quantized_artifact_holds_integers_and_scales(cases):
    _, artifact, _, _ = cases["gpt2_int4"]
    with open(os.path.join(artifact, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["quantization"]["scheme"] == "int4"
    arrays = manifest["weights"]["arrays"]
    kernel = arrays["layer_0/mlp/up/kernel"]
    assert (kernel["dtype"], kernel["model_dtype"]) == ("int8", "int4")  # widened for numpy
    assert arrays["layer_0/mlp/up/kernel_scale"]["dtype"] == "float32"
    with np.load(os.path.join(artifact, "weights.npz"), allow_pickle=False) as npz:
        values = npz["layer_0/mlp/up/kernel"]
    assert values.min() >= -8 and values.max() <= 7 and len(np.unique(values)) > 8


def test_params_export_refuses_a_quantized_checkpoint(cases, tmp_path):
    float_ckpt, _, _, _ = cases["gpt2"]
    quantized, _, _, _ = cases["gpt2_int4"]
    with pytest.raises(guard.QuantizedCheckpoint) as e:
        params_export.export(quantized, str(tmp_path / "out"), field="--checkpoint")
    assert str(e.value).startswith(f"--checkpoint = '{quantized}' is a quantized checkpoint "
                                   f"(int4, groups of 32, made by fmjax.quantize from "
                                   f"{float_ckpt}); fmjax.export --format=params needs float")
    assert "--format=stablehlo" in str(e.value) and not (tmp_path / "out").exists()


def test_an_encoder_and_a_too_long_cache_are_refused(cases, tmp_path):
    config, data = sentencepiece_config(tmp_path, "bert")
    bert = random_checkpoint(str(tmp_path / "bert"), config, data)
    with pytest.raises(stablehlo_export.CannotExport,
                       match=r"model.family = 'bert' is an encoder model, which has no "
                             r"StableHLO export .* decoders \(gpt2, llama, prefix-LM\) and "
                             r"encoder-decoders \(t5, t5_1_1\)"):
        stablehlo_export.export_stablehlo(bert, str(tmp_path / "out"))
    with pytest.raises(stablehlo_export.CannotExport,
                       match=r"--max_length=65: .* at most model.max_positions = 64"):
        stablehlo_export.export_stablehlo(cases["gpt2"][0], str(tmp_path / "out"),
                                          max_length=65)
    assert not (tmp_path / "out").exists()
