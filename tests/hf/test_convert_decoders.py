"""Hugging Face interop (fmjax/hf, python -m fmjax.convert): tiny random transformers models
(every weight random, norms and biases included, so a misplaced tensor shows in the logits)
imported and compared with HF's own forward pass and greedy decode; export -> from_pretrained
and export -> import are exact; unrepresentable configs and tensors are refused; conversion
streams (peak host memory measured in a fresh process)."""
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmjax.training import checkpoint, finetune_stage as finetuner, integrity
from fmjax import config as config_lib  # noqa: E402
from fmjax import models
from fmjax.generation import sampling  # noqa: E402
from fmjax.hf import conversion, mapping, tiny_models  # noqa: E402
from fmjax.hf.safetensors_io import HFDir, TensorSpec, write_model  # noqa: E402
from tests.e2e.test_train_cli import cli as _cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 96
CASES = {  # name: (family, HF model class, HF config)
    "gpt2": ("gpt2", "GPT2LMHeadModel", dict(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1)),
    "gpt2_untied": ("gpt2", "GPT2LMHeadModel", dict(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_inner=48,
        layer_norm_epsilon=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    "llama_gqa": ("llama", "LlamaForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "llama_tied": ("llama", "LlamaForCausalLM", dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        tie_word_embeddings=True)),
}
QUIET = dict(log=lambda msg: None)


def hf_model(case: str, seed: int = 0, vocab: int = VOCAB):
    """A tiny HF model with every parameter random: N(0, 0.2), norm scales 1 + N(0, 0.2)."""
    _, cls_name, kwargs = CASES[case]
    cls = getattr(transformers, cls_name)
    config_cls = getattr(transformers, cls_name.replace("LMHeadModel", "Config")
                         .replace("ForCausalLM", "Config"))
    torch.manual_seed(seed)
    return tiny_models.randomize(cls(config_cls(**{**kwargs, "vocab_size": vocab})), seed)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{case: (saved HF directory, the model)}."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case in CASES:
        model = hf_model(case)
        model.save_pretrained(str(root / case))
        out[case] = (str(root / case), model)
    return out


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits.float().numpy()


def fmjax_model(ckpt):
    params, config_dict, _ = checkpoint.read_params_to_host(ckpt)
    model, cfg = models.build(config_lib.from_json_dict(config_dict))
    return model, cfg, params


def fm_logits(model, params, ids):
    return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids, jnp.int32)))


def token_ids(seed=0, shape=(2, 24)):
    return np.random.default_rng(seed).integers(0, VOCAB, shape)


def import_case(hf_dirs, case, tmp_path, scan=True, **kw):
    family = CASES[case][0]
    out = str(tmp_path / f"{case}_{scan}")
    result = conversion.import_hf(family, hf_dirs[case][0], out, scan_layers=scan, **QUIET, **kw)
    return result, out


# ---- the safetensors reader and the streaming checksum -------------------------------------

@pytest.mark.slow
def test_reader_matches_safe_open_including_slices_and_bfloat16(hf_dirs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    directory = hf_dirs["gpt2"][0]
    hf = HFDir(directory)
    with safe_open(os.path.join(directory, "model.safetensors"), "np") as f:
        assert sorted(f.keys()) == sorted(hf.tensors)
        for name in f.keys():
            np.testing.assert_array_equal(hf.read(name), f.get_tensor(name))
        name = "transformer.h.1.attn.c_attn.weight"
        np.testing.assert_array_equal(hf.read(name, 1, 32, 64), f.get_tensor(name)[:, 32:64])
    values = {"w": torch.randn(5, 7).to(torch.bfloat16), "h": torch.randn(3).to(torch.float16)}
    os.makedirs(tmp_path / "bf16")
    save_file(values, str(tmp_path / "bf16" / "model.safetensors"))
    (tmp_path / "bf16" / "config.json").write_text("{}")
    hf = HFDir(str(tmp_path / "bf16"))
    np.testing.assert_array_equal(hf.read("w").astype(np.float32), values["w"].float().numpy())
    np.testing.assert_array_equal(hf.read("w", 0, 1, 3).astype(np.float32),
                                  values["w"][1:3].float().numpy())
    np.testing.assert_array_equal(hf.read("h"), values["h"].numpy())


def test_streaming_checksum_equals_tree_checksums():
    rng = np.random.default_rng(0)
    leaves = {"f32": rng.standard_normal((3, 5, 7)).astype(np.float32),
              "bf16": jnp.asarray(rng.standard_normal((4, 9)), jnp.bfloat16),
              "i32": rng.integers(-9, 9, (2, 3)).astype(np.int32)}
    expected = integrity.tree_checksums(leaves)
    for name, leaf in leaves.items():
        whole, by_rows = integrity.LeafChecksum(), integrity.LeafChecksum()
        whole.update(np.asarray(leaf))
        for row in np.asarray(leaf):
            by_rows.update(row)
        assert whole.hexdigest() == by_rows.hexdigest() == expected[name]
    flipped = np.array(leaves["f32"])
    flipped.view(np.uint32)[1, 2, 3] ^= 1
    digest = integrity.LeafChecksum()
    digest.update(flipped)
    assert digest.hexdigest() != expected["f32"]


# ---- parity with transformers ----------------------------------------------------------

@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("case", list(CASES))
def test_imported_logits_match_transformers(hf_dirs, tmp_path, case, scan):
    result, ckpt = import_case(hf_dirs, case, tmp_path, scan)
    hf = hf_dirs[case][1]
    assert result.num_params == sum(p.numel() for p in hf.parameters())
    assert not result.has_tokenizer
    model, cfg, params = fmjax_model(ckpt)
    assert cfg.scan_layers == scan and cfg.param_dtype == "float32"
    ids = token_ids()
    diff = np.abs(fm_logits(model, params, ids) - hf_logits(hf, ids)).max()
    assert diff < 1e-4, diff


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_greedy_decodes_are_identical(hf_dirs, tmp_path, case):
    """fmjax's KV-cache decoder (what fmjax.generate runs) vs HF recomputing the whole
    sequence each step."""
    _, ckpt = import_case(hf_dirs, case, tmp_path)
    model, _, params = fmjax_model(ckpt)
    prompt = token_ids(1, (3, 6))
    ours = np.asarray(sampling.generate(model, params, jnp.asarray(prompt, jnp.int32),
                                        jax.random.PRNGKey(0), max_new_tokens=8,
                                        temperature=0.0))
    tokens = prompt
    for _ in range(8):
        next_ids = hf_logits(hf_dirs[case][1], tokens)[:, -1].argmax(-1)
        tokens = np.concatenate([tokens, next_ids[:, None]], axis=1)
    np.testing.assert_array_equal(ours, tokens[:, 6:])


@pytest.mark.parametrize("case,scan", [("gpt2", True), ("gpt2_untied", False),
                                       ("llama_gqa", False), ("llama_tied", True)])
def test_export_is_exact_both_ways(hf_dirs, tmp_path, case, scan):
    """import -> export gives back HF's own tensors (from_pretrained loads them, same logits);
    importing the export gives bitwise the same params and model config."""
    family = CASES[case][0]
    _, first = import_case(hf_dirs, case, tmp_path, scan)
    exported = str(tmp_path / "exported")
    conversion.export_hf(family, first, exported, **QUIET)
    original = hf_dirs[case][1]
    reloaded = type(original).from_pretrained(exported).eval()
    theirs, ours = original.state_dict(), reloaded.state_dict()
    assert sorted(theirs) == sorted(ours)
    for name in theirs:
        np.testing.assert_array_equal(theirs[name].numpy(), ours[name].numpy(), err_msg=name)
    ids = token_ids(2)
    np.testing.assert_array_equal(hf_logits(reloaded, ids), hf_logits(original, ids))

    second = str(tmp_path / "second")
    conversion.import_hf(family, exported, second, scan_layers=scan, **QUIET)
    a, config_a, _ = checkpoint.read_params_to_host(first)
    b, config_b, _ = checkpoint.read_params_to_host(second)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert config_a["model"] == config_b["model"]


def test_sharded_bfloat16_checkpoint_round_trips(tmp_path):
    model = hf_model("llama_gqa").to(torch.bfloat16)
    source = str(tmp_path / "hf")
    model.save_pretrained(source, max_shard_size="20KB")
    assert os.path.isfile(os.path.join(source, "model.safetensors.index.json"))
    ckpt = str(tmp_path / "ckpt")
    conversion.import_hf("llama", source, ckpt, **QUIET)
    params, config_dict, _ = checkpoint.read_params_to_host(ckpt)
    assert config_dict["model"]["param_dtype"] == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    exported = str(tmp_path / "exported")
    files = conversion.export_hf("llama", ckpt, exported, max_shard_bytes=30_000, **QUIET)
    assert "model.safetensors.index.json" in files and len(files) > 3
    reloaded = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.bfloat16)
    for name, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name
    # and cast on the way in: float32 params, HF's bf16 values exactly
    ckpt32 = str(tmp_path / "ckpt32")
    conversion.import_hf("llama", source, ckpt32, param_dtype="float32", **QUIET)
    params32, _, _ = checkpoint.read_params_to_host(ckpt32)
    np.testing.assert_array_equal(params32["embed"]["embedding"],
                                  model.model.embed_tokens.weight.detach().float().numpy())


@pytest.mark.slow
def test_a_training_run_exports_to_transformers(tmp_path):
    """A llama trained in fmjax (its workdir: a full train state, scanned layers) -> HF."""
    from tests.training.test_checkpoint import saved_run
    workdir = str(tmp_path / "run")
    engine, state = saved_run(workdir)
    exported = str(tmp_path / "exported")
    conversion.export_hf("llama", workdir, exported, **QUIET)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(exported).eval()
    ids = np.random.default_rng(0).integers(0, engine.model_config.vocab_size, (2, 16))
    params = jax.device_get(state.params)
    diff = np.abs(fm_logits(engine.model, params, ids) - hf_logits(reloaded, ids)).max()
    assert diff < 1e-4, diff


# ---- every test above fails if a link were wrong --------------------------------------------

def _mutated(converter, fn):
    return dataclasses.replace(converter, links=lambda cfg: fn(converter.links(cfg)))


def _swap(links, a, b):
    order = [link.fm for link in links]
    i, j = order.index(a), order.index(b)
    links = list(links)
    links[i], links[j] = (dataclasses.replace(links[i], fm=links[j].fm),
                          dataclasses.replace(links[j], fm=links[i].fm))
    return links


def _transposed(links, fm):
    flip = {"matrix": "linear", "linear": "matrix"}
    return [dataclasses.replace(link, layout=flip[link.layout]) if link.fm == fm else link
            for link in links]


MUTATIONS = {
    "gpt2: query <-> key in c_attn": ("gpt2", lambda ls: _swap(ls, "attn/query/kernel",
                                                                "attn/key/kernel")),
    "gpt2: c_proj transposed": ("gpt2", lambda ls: _transposed(ls, "attn/out/kernel")),
    "gpt2: ln_1 <-> ln_2": ("gpt2", lambda ls: _swap(ls, "attn_norm/scale", "mlp_norm/scale")),
    "llama_gqa: gate <-> up": ("llama_gqa", lambda ls: _swap(ls, "mlp/gate/kernel",
                                                             "mlp/up/kernel")),
    "llama_gqa: q_proj not transposed": ("llama_gqa",
                                         lambda ls: _transposed(ls, "attn/query/kernel")),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_link_breaks_parity(hf_dirs, tmp_path, monkeypatch, mutation):
    case, fn = MUTATIONS[mutation]
    family = CASES[case][0]
    monkeypatch.setitem(mapping.CONVERTERS._entries, family,
                        _mutated(mapping.get(family), fn))
    _, ckpt = import_case(hf_dirs, case, tmp_path)
    model, _, params = fmjax_model(ckpt)
    ids = token_ids()
    assert np.abs(fm_logits(model, params, ids) - hf_logits(hf_dirs[case][1], ids)).max() > 1e-2


# ---- refusals --------------------------------------------------------------------------------

REFUSED = [
    ("gpt2", "gpt2", {"activation_function": "gelu"}, "activation_function = 'gelu'"),
    ("gpt2", "gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("llama_gqa", "llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 1e4}}, "rope_parameters.rope_type"),
    ("llama_gqa", "llama", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling"),
    ("llama_gqa", "llama", {"attention_bias": True}, "attention_bias = True"),
    ("llama_gqa", "llama", {"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ("gpt2", "llama", {}, "model_type = 'gpt2'"),
]


@pytest.mark.parametrize("case,family,edit,message", REFUSED,
                         ids=[r[3].split(" ")[0] for r in REFUSED])
def test_unrepresentable_config_fields_are_refused(hf_dirs, tmp_path, case, family, edit,
                                                   message):
    with pytest.raises(mapping.UnsupportedHFConfig, match=message.replace("(", r"\(")):
        import_edited(hf_dirs[case][0], tmp_path, family, edit)


def import_edited(hf_dir, tmp_path, family, edit):
    """Imports a copy of `hf_dir` whose config.json has `edit` merged in."""
    source = str(tmp_path / "hf")
    shutil.copytree(hf_dir, source)
    with open(os.path.join(source, "config.json")) as f:
        hf_config = json.load(f)
    with open(os.path.join(source, "config.json"), "w") as f:
        json.dump({**hf_config, **edit}, f)
    return conversion.import_hf(family, source, str(tmp_path / "out"), **QUIET)
    assert not os.path.exists(tmp_path / "out")


def test_unmapped_or_misshapen_tensors_are_refused(hf_dirs, tmp_path):
    source = str(tmp_path / "hf")
    shutil.copytree(hf_dirs["llama_gqa"][0], source)
    hf = HFDir(source)
    specs = [TensorSpec(n, t.dtype, t.shape, lambda n=n: hf.read(n)) for n, t in hf.tensors.items()]
    extra = np.zeros(32, np.float32)
    specs.append(TensorSpec("model.layers.0.self_attn.q_proj.bias", extra.dtype, extra.shape,
                            lambda: extra))
    os.makedirs(tmp_path / "extra")
    shutil.copy(os.path.join(source, "config.json"), tmp_path / "extra")
    write_model(str(tmp_path / "extra"), specs)
    with pytest.raises(mapping.MappingError, match=r"q_proj\.bias"):
        conversion.import_hf("llama", str(tmp_path / "extra"), str(tmp_path / "o1"), **QUIET)
    with open(os.path.join(source, "config.json")) as f:
        hf_config = json.load(f)
    with open(os.path.join(source, "config.json"), "w") as f:
        json.dump({**hf_config, "intermediate_size": 40}, f)
    with pytest.raises(mapping.MappingError, match=r"mlp\.gate_proj\.weight: the checkpoint "
                                                   r"holds \(48, 32\), its config.json implies "
                                                   r"\(40, 32\)"):
        conversion.import_hf("llama", source, str(tmp_path / "o2"), **QUIET)


def test_unknown_family_names_the_converters():
    with pytest.raises(config_lib.ConfigError, match=r"add fmjax/hf/bertt.py.*'gpt2', 'llama'"):
        mapping.get("bertt")


# ---- a checkpoint without a tokenizer -------------------------------------------------------

def test_missing_tokenizer_is_stored_empty_and_readers_ask_for_one(hf_dirs, tmp_path):
    _, ckpt = import_case(hf_dirs, "gpt2", tmp_path)
    config_dict, tokenizer_bytes = checkpoint.read_source(ckpt)
    assert tokenizer_bytes == b""
    assert config_dict["tokenizer"]["eos_id"] == VOCAB - 1  # from config.json
    result = subprocess.run([sys.executable, "-m", "fmjax.generate", f"--workdir={ckpt}"],
                            cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "stores no tokenizer" in result.stderr
    assert "--tokenizer=PATH" in result.stderr
    config = config_lib.base_config()
    config.init_from = ckpt
    with pytest.raises(config_lib.ConfigError, match="config.tokenizer.path = ''.*stores no"):
        finetuner.finetune(config, str(tmp_path / "ft"))
    # given one, fine-tuning keeps the user's tokenizer ids instead of the checkpoint's
    config.tokenizer.bos_id = 7
    inherited = finetuner.inherit_pretrained(config, config_dict, tokenizer_ids=False)
    assert inherited.tokenizer.bos_id == 7 and inherited.model.d_model == 32


# ---- through the CLIs, with a SentencePiece tokenizer ---------------------------------------

def _train_tokenizer(path, vocab_size, *, files=("textwrap.py", "string.py", "shlex.py", "glob.py"),
                     unk_id=0, bos_id=1, eos_id=2, pad_id=-1):
    """A SentencePiece BPE on stdlib `files` written to `path`; the ids default to Llama's
    (unk 0, bos 1, eos 2, no pad)."""
    import sentencepiece as spm
    stdlib = os.path.dirname(os.__file__)
    lines = []
    for name in files:
        with open(os.path.join(stdlib, name)) as f:
            lines += [line for line in f.read().splitlines() if line.strip()]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buffer,
                                   vocab_size=vocab_size, model_type="bpe", unk_id=unk_id,
                                   bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, minloglevel=2,
                                   num_threads=1)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    return spm.SentencePieceProcessor(model_file=path)


@pytest.mark.slow
def test_cli_import_generate_finetune_and_export(tmp_path, data_dir):
    vocab = 320
    source = str(tmp_path / "hf")
    model = hf_model("llama_gqa", seed=3, vocab=vocab)
    model.save_pretrained(source)
    sp = _train_tokenizer(os.path.join(source, "tokenizer.model"), vocab)
    ckpt = str(tmp_path / "ckpt")
    out = _cli("fmjax.convert", "import", "--family=llama", f"--hf_dir={source}",
               f"--output={ckpt}")
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in out
    assert "tokenizer: kept" in out
    config_dict, tokenizer_bytes = checkpoint.read_source(ckpt)
    assert tokenizer_bytes == open(os.path.join(source, "tokenizer.model"), "rb").read()
    assert [config_dict["tokenizer"][k] for k in ("pad_id", "bos_id", "eos_id", "unk_id")] == \
        [-1, 1, 2, 0]

    # fmjax.generate on the export, greedy: HF's greedy continuation of the same ids
    prompt = "def wrap(text"
    out = _cli("fmjax.generate", f"--workdir={ckpt}", f"--prompt={prompt}", "--temperature=0",
               "--max_new_tokens=8")
    tokens = np.asarray([[sp.bos_id()] + sp.encode(prompt)])
    for _ in range(8):
        next_id = hf_logits(model, tokens)[:, -1].argmax(-1)
        tokens = np.concatenate([tokens, next_id[:, None]], axis=1)
    new = tokens[0, -8:].tolist()
    new = new[:new.index(sp.eos_id())] if sp.eos_id() in new else new
    assert f"--- sample 0 (export) ---\n{prompt + sp.decode(new)}\n" in out

    # fmjax.finetune starts from it (LM task on the stdlib corpus, 2 steps)
    workdir = str(tmp_path / "ft")
    out = _cli("fmjax.finetune", "--config=configs/default.py", "--config.task.name=lm",
               f"--config.init_from={ckpt}", f"--workdir={workdir}",
               f"--config.data.tfds_data_dir={data_dir}", "--config.train.steps=2",
               "--config.train.global_batch_size=4", "--config.train.eval_every=2",
               "--config.train.eval_batches=1", "--config.train.checkpoint_every=2",
               "--config.train.sample_tokens=4", timeout=600)
    assert "fine-tune (lm) finished: 2 steps" in out, out
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        first_eval = next(r for r in map(json.loads, f) if "eval_loss" in r)
    assert first_eval["step"] == 0 and 0 < first_eval["eval_loss"] < 2 * np.log(vocab)

    # ... and its best checkpoint converts back to HF
    exported = str(tmp_path / "exported")
    _cli("fmjax.convert", "export", "--family=llama",
         f"--workdir_or_checkpoint={workdir}/best", f"--output={exported}")
    assert open(os.path.join(exported, "tokenizer.model"), "rb").read() == tokenizer_bytes
    reloaded = transformers.LlamaForCausalLM.from_pretrained(exported).eval()
    assert reloaded.config.rope_parameters["rope_theta"] == 500.0
    finetuned, _, params = fmjax_model(os.path.join(workdir, "best"))
    ids = np.random.default_rng(0).integers(0, vocab, (2, 16))
    assert np.abs(hf_logits(reloaded, ids) - fm_logits(finetuned, params, ids)).max() < 1e-4


# ---- streaming: peak host memory -------------------------------------------------------------

MEMORY_PROBE = r"""
import json, sys
from fmjax.training import checkpoint
from fmjax.hf import conversion
from fmjax.hf.safetensors_io import HFDir

def status(field):  # bytes, from /proc/self/status (VmRSS: now; VmHWM: peak since reset)
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

def run(mode, source, out):
    if mode == "import":
        conversion.import_hf("llama", source, out, log=lambda m: None)
    elif mode == "export":
        conversion.export_hf("llama", source, out, log=lambda m: None)
    else:  # what checkpoint.export_params needs: the whole tree in memory, then orbax
        hf = HFDir(source)
        tree = {name.replace(".", "_"): hf.read(name) for name in hf.tensors}
        checkpoint.export_params(out, tree, {}, b"")

mode, tiny, tiny_out, source, out = sys.argv[1:]
run(mode, tiny, tiny_out)  # warm-up on a tiny model: imports, tracing, orbax set-up
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (ru_maxrss would keep the
    f.write("5")                                # peak inherited from the forking parent)
run(mode, source, out)
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


ORBAX_CACHE_BYTES = 100_000_000


def _synthetic_llama(directory, layers=12, d=512, ff=2048, vocab=8192):
    """A ~235 MB float32 Llama written tensor by tensor (no torch, no model in memory)."""
    os.makedirs(directory)
    config = {"model_type": "llama", "vocab_size": vocab, "hidden_size": d,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": 8,
              "num_key_value_heads": 8, "max_position_embeddings": 128}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    shapes = {"model.embed_tokens.weight": (vocab, d), "lm_head.weight": (vocab, d),
              "model.norm.weight": (d,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,),
                       **{p + f"self_attn.{n}_proj.weight": (d, d) for n in "qkvo"},
                       p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                       p + "mlp.down_proj.weight": (d, ff)})
    specs = [TensorSpec(name, np.dtype(np.float32), shape,
                        lambda k=k, shape=shape: np.random.default_rng(k).standard_normal(
                            shape, dtype=np.float32))
             for k, (name, shape) in enumerate(shapes.items())]
    write_model(directory, specs)
    return sum(s.nbytes for s in specs), max(s.nbytes for s in specs)


def _peak_increase(mode, tiny, tiny_out, source, out):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, tiny, tiny_out, source,
                             out], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    return rss["peak"] - rss["before"]


@pytest.mark.slow
def test_conversion_streams_peak_memory_stays_far_below_the_model(tmp_path):
    """Peak RSS during the conversion minus the RSS before it, in a fresh process that first
    converted a tiny model (imports, tracing, orbax set-up): import and export vs what
    export_params needs (the whole tree read, then saved)."""
    source, tiny = str(tmp_path / "hf"), str(tmp_path / "tiny")
    model_bytes, largest = _synthetic_llama(source)
    _synthetic_llama(tiny, layers=1, d=64, ff=128, vocab=256)
    ckpt, tiny_ckpt = str(tmp_path / "ckpt"), str(tmp_path / "tiny_ckpt")
    imported = _peak_increase("import", tiny, tiny_ckpt, source, ckpt)
    exported = _peak_increase("export", tiny_ckpt, str(tmp_path / "tiny_back"), ckpt,
                              str(tmp_path / "back"))
    whole = _peak_increase("whole_tree", tiny, str(tmp_path / "tiny_whole"), source,
                           str(tmp_path / "whole"))
    mib = 2**20
    print(f"\nmodel {model_bytes / mib:.0f} MiB (largest tensor {largest / mib:.0f} MiB, largest "
          f"stacked leaf {12 * 2048 * 512 * 4 / mib:.0f} MiB): peak RSS increase import "
          f"{imported / mib:.0f} MiB, export {exported / mib:.0f} MiB, whole-tree "
          f"export_params {whole / mib:.0f} MiB")
    # orbax's tensorstore context caches up to 100 MB (cache_pool#ocdbt); beyond it, a few
    # tensors. The same bound holds at 2x the layers (measured: flat), the whole tree does not.
    bound = ORBAX_CACHE_BYTES + 4 * largest
    assert imported < bound and exported < bound, (imported, exported, bound, model_bytes)
    assert whole > model_bytes  # the measurement does see a model held in memory
    assert HFDir(str(tmp_path / "back")).tensors.keys() == HFDir(source).tensors.keys()
