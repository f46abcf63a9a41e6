"""Hugging Face interop for the encoder (BERT) and encoder-decoder (T5 v1.0, v1.1) families:
tiny random transformers models (every weight random, norms and biases included) imported and
compared with HF's own forward pass (MLM logits, pooled output, seq2seq logits) and greedy
decode; export -> from_pretrained and export -> import are exact; the directory variants
(tied copies stored, a head missing, a SentencePiece with extra ids) and unrepresentable
configs. Helpers shared with tests/hf/test_convert_decoders.py (gpt2, llama)."""
import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmjax.training import checkpoint
from fmjax import config as config_lib, models  # noqa: E402
from fmjax.data.sp_tokenizer import Tokenizer  # noqa: E402
from fmjax.hf import conversion, mapping, tiny_models  # noqa: E402
from fmjax.hf.safetensors_io import HFDir, TensorSpec, write_model  # noqa: E402
from tests.hf.test_convert_decoders import (QUIET, _cli, _mutated, _swap, _train_tokenizer,  # noqa: E402
                                _transposed, fmjax_model, import_edited)

BERT_VOCAB, T5_VOCAB, T5_PIECES = 96, 160, 128
BERT = dict(vocab_size=BERT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=40, type_vocab_size=3,
            layer_norm_eps=1e-12)
T5 = dict(vocab_size=T5_VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
          num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
          layer_norm_epsilon=1e-6, decoder_start_token_id=0)
CASES = {  # name: (fmjax family, HF class, HF config class, HF config)
    "bert": ("bert", "BertForMaskedLM", "BertConfig", BERT),  # no pooler in the file
    "bert_pretraining": ("bert", "BertForPreTraining", "BertConfig", BERT),  # pooler + NSP
    "t5": ("t5", "T5ForConditionalGeneration", "T5Config", dict(T5, feed_forward_proj="relu")),
    "t5_1_1": ("t5_1_1", "T5ForConditionalGeneration", "T5Config",
               dict(T5, d_kv=12, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}


def hf_model(case: str, seed: int = 0):
    """Every parameter random: N(0, 0.2); norm scales 1 + N(0, 0.2). v1.1 gets its own lm_head
    (transformers 5 builds T5 with lm_head tied to shared; released v1.1 checkpoints are not)."""
    _, cls_name, config_name, kwargs = CASES[case]
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(getattr(transformers, config_name)(**kwargs))
    if case == "t5_1_1":
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    return tiny_models.randomize(model, seed)


def _rewrite(directory, edit):
    """model.safetensors with `edit({name: array})` applied (older layouts, damaged files)."""
    hf = HFDir(directory)
    tensors = edit({name: hf.read(name) for name in hf.tensors})
    os.remove(os.path.join(directory, "model.safetensors"))
    write_model(directory, [TensorSpec(n, v.dtype, v.shape, lambda v=v: v)
                            for n, v in tensors.items()])


def _older_layouts(case, tensors):
    """bert: the MLM bias stored only as cls.predictions.decoder.bias, plus the decoder weight
    (tied copies, as transformers 4 wrote them); t5: encoder/decoder.embed_tokens and lm_head
    copies of shared.weight and the unused EncDecAttention bias (the hub's t5-small)."""
    if case == "bert":
        tensors["cls.predictions.decoder.bias"] = tensors.pop("cls.predictions.bias")
        embedding = tensors["bert.embeddings.word_embeddings.weight"]
        tensors["cls.predictions.decoder.weight"] = embedding
    elif case == "t5":
        for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                     "lm_head.weight"):
            tensors[name] = tensors["shared.weight"]
        tensors["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = \
            np.ones((8, 4), np.float32)
    return tensors


def _t5_spiece(path):
    """A T5-style SentencePiece (pad 0, eos 1, unk 2, no bos) with T5_PIECES pieces."""
    _train_tokenizer(path, T5_PIECES, files=("textwrap.py", "string.py"), pad_id=0, eos_id=1,
                     unk_id=2, bos_id=-1)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{case: (saved HF directory, the model)}; "bert" and "t5" in older layouts, "t5" with a
    spiece.model of fewer pieces than embedding rows."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for case in CASES:
        model, directory = hf_model(case), str(root / case)
        model.save_pretrained(directory)
        _rewrite(directory, lambda tensors, case=case: _older_layouts(case, tensors))
        out[case] = (directory, model)
    _t5_spiece(os.path.join(out["t5"][0], "spiece.model"))
    return out


@pytest.fixture(scope="module")
def imported(hf_dirs, tmp_path_factory):
    """get(case, scan) -> (import result, checkpoint, fmjax model, params), imported once."""
    root, cache = tmp_path_factory.mktemp("imported"), {}

    def get(case, scan=True):
        if (case, scan) not in cache:
            ckpt = str(root / f"{case}_{scan}")
            result = conversion.import_hf(CASES[case][0], hf_dirs[case][0], ckpt,
                                          scan_layers=scan, **QUIET)
            model, _, params = fmjax_model(ckpt)
            cache[case, scan] = result, ckpt, model, params
        return cache[case, scan]
    return get


def ids(seed, shape, vocab):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def bert_inputs(seed=0):
    return ids(seed, (2, 24), BERT_VOCAB), ids(seed + 1, (2, 24), BERT["type_vocab_size"])


def t5_inputs(seed=0):
    decoder = ids(seed + 1, (2, 9), T5_VOCAB)
    decoder[:, 0] = 0  # the start id
    return ids(seed, (2, 13), T5_VOCAB), decoder


def hf_outputs(case, model, inputs):
    """{output name: array} of an HF model (MLM / seq2seq logits; pooled for BertForPreTraining)."""
    t = [torch.tensor(x, dtype=torch.long) for x in inputs]
    with torch.no_grad():
        if case.startswith("t5"):
            return {"logits": model(input_ids=t[0], decoder_input_ids=t[1]).logits.numpy()}
        out = {"logits": model(input_ids=t[0]).logits if case == "bert" else
               model(input_ids=t[0]).prediction_logits,
               "logits_types": (model(input_ids=t[0], token_type_ids=t[1]).logits
                                if case == "bert" else
                                model(input_ids=t[0], token_type_ids=t[1]).prediction_logits)}
        if case == "bert_pretraining":
            out["pooled"] = model.bert(input_ids=t[0], token_type_ids=t[1]).pooler_output
        return {k: v.numpy() for k, v in out.items()}


@functools.partial(jax.jit, static_argnums=0, static_argnames="flag")
def forward(model, params, x, y, flag=None):
    """T5: (encoder ids, decoder ids) -> logits; BERT: (ids, token types) -> MLM logits, or
    with flag="return_pooled" / "return_features". Compiled once per model config and shape,
    shared by the tests."""
    kw = {flag: True} if flag else {}
    if models.get_family(model.cfg.family).kind == "encoder_decoder":
        return model.apply({"params": params}, x, y, **kw)
    return model.apply({"params": params}, x, token_types_BT=y, **kw)


def fm_outputs(case, model, params, inputs):
    x, y = (jnp.asarray(a, jnp.int32) for a in inputs)
    if case.startswith("t5"):
        return {"logits": np.asarray(forward(model, params, x, y))}
    out = {"logits": forward(model, params, x, jnp.zeros_like(y)),  # HF's default: type 0
           "logits_types": forward(model, params, x, y)}
    if case == "bert_pretraining":
        out["pooled"] = forward(model, params, x, y, flag="return_pooled")
    return {k: np.asarray(v) for k, v in out.items()}


def max_diffs(case, hf, model, params, seed=0):
    inputs = t5_inputs(seed) if case.startswith("t5") else bert_inputs(seed)
    theirs, ours = hf_outputs(case, hf, inputs), fm_outputs(case, model, params, inputs)
    assert theirs.keys() == ours.keys()
    return {k: float(np.abs(theirs[k] - ours[k]).max()) for k in theirs}


# ---- parity with transformers ----------------------------------------------------------

@pytest.mark.parametrize("case,scan", [(case, True) for case in CASES] + [
    ("bert", False), ("t5_1_1", False)])  # unrolled bert_pretraining, t5: the export test
def test_imported_outputs_match_transformers(hf_dirs, imported, case, scan):
    result, ckpt, model, params = imported(case, scan)
    hf = hf_dirs[case][1]
    diffs = max_diffs(case, hf, model, params)
    assert max(diffs.values()) < 1e-4, diffs
    hf_count = sum(p.numel() for n, p in hf.named_parameters() if "seq_relationship" not in n)
    pooler = BERT["hidden_size"] * (BERT["hidden_size"] + 1) if case == "bert" else 0
    assert result.num_params == hf_count + pooler  # BertForMaskedLM has no pooler
    assert result.fresh == (("pooler",) if case == "bert" else ())
    config_dict, tokenizer_bytes = checkpoint.read_source(ckpt)
    assert config_dict["model"]["scan_layers"] == scan
    assert config_dict["objective"] == ("mlm" if case.startswith("bert") else "span_corruption")
    if case == "t5":  # the spiece.model: kept, its ids, and the rows past its pieces
        assert result.has_tokenizer
        assert config_dict["tokenizer"]["extra_ids"] == T5_VOCAB - T5_PIECES
        # every extra row is a sentinel here (fewer than T5's 100), first = last row
        assert config_dict["span_corruption"]["num_sentinels"] == T5_VOCAB - T5_PIECES
        assert [config_dict["tokenizer"][k] for k in ("pad_id", "bos_id", "eos_id", "unk_id")] \
            == [0, -1, 1, 2]
        path = os.path.join(ckpt, "..", f"spiece_{scan}.model")
        with open(path, "wb") as f:
            f.write(tokenizer_bytes)
        Tokenizer(path).check_against(config_lib.from_json_dict(config_dict))  # finetune's check
    else:
        assert not result.has_tokenizer


@pytest.mark.parametrize("case", ["t5", "t5_1_1"])
def test_t5_greedy_decodes_are_identical(hf_dirs, imported, case):
    """Greedy decoding that recomputes the whole decoder each step, in both: HF on the growing
    prefix, fmjax on a fixed-length buffer (causal: position t sees only tokens <= t)."""
    _, _, model, params = imported(case)
    encoder, buffer = t5_inputs(5)
    hf, steps = hf_dirs[case][1], buffer.shape[1]
    theirs = np.zeros((len(encoder), 1), np.int64)
    for _ in range(steps):
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor(encoder), decoder_input_ids=torch.tensor(theirs))
        theirs = np.concatenate([theirs, logits.logits[:, -1].argmax(-1).numpy()[:, None]], 1)
    ours = np.zeros((len(encoder), steps + 1), np.int32)
    for t in range(steps):
        logits = np.asarray(forward(model, params, encoder, ours[:, :steps]))
        ours[:, t + 1] = logits[:, t].argmax(-1)
    np.testing.assert_array_equal(ours, theirs)
    assert len(np.unique(theirs[:, 1:])) >= 3  # not one repeated token


def test_bert_model_directory_imports_with_a_fresh_mlm_head(hf_dirs, tmp_path):
    """BertModel's save_pretrained (no `bert.` prefix, pooler, no cls.*): encoder features and
    pooled output exact; the MLM head initialised as transformers does, and said so."""
    hf = hf_dirs["bert_pretraining"][1].bert
    source, ckpt = str(tmp_path / "bert_model"), str(tmp_path / "ckpt")
    hf.save_pretrained(source)
    notes = []
    result = conversion.import_hf("bert", source, ckpt, scan_layers=False, log=notes.append)
    assert result.fresh == ("mlm_head",)
    assert any("has no mlm_head weights: initialised" in n for n in notes)
    model, cfg, params = fmjax_model(ckpt)
    tokens, types = bert_inputs(3)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(tokens), token_type_ids=torch.tensor(types))
    for flag, theirs in (("return_features", out.last_hidden_state),
                         ("return_pooled", out.pooler_output)):
        ours = forward(model, params, jnp.asarray(tokens), jnp.asarray(types), flag=flag)
        assert np.abs(np.asarray(ours) - theirs.numpy()).max() < 1e-4, flag
    head = params["mlm_head"]
    assert abs(float(np.std(head["transform"]["kernel"])) / cfg.init_std - 1) < 0.15
    np.testing.assert_array_equal(head["norm"]["scale"], 1)
    for bias in (head["bias"], head["norm"]["bias"], head["transform"]["bias"]):
        np.testing.assert_array_equal(bias, 0)


# ---- export ----------------------------------------------------------------------------------

def _reference(case, model):
    """(HF class that loads the export, the model it must equal): BertForPreTraining's
    next-sentence head has no fmjax counterpart, so its export is compared as a BertModel."""
    if case == "bert_pretraining":
        return transformers.BertModel, model.bert
    return type(model), model


@pytest.mark.parametrize("case,scan", [("bert", True), ("bert_pretraining", False),
                                       ("t5", False), ("t5_1_1", True)])
def test_export_is_exact_both_ways(hf_dirs, imported, tmp_path, case, scan):
    """import -> export gives back HF's own tensors (from_pretrained loads them: the same state
    and logits); importing the export gives bitwise the same params and model config."""
    family = CASES[case][0]
    _, first, _, _ = imported(case, scan)
    exported = str(tmp_path / "exported")
    files = conversion.export_hf(family, first, exported, **QUIET)
    assert ("spiece.model" in files) == (case == "t5")
    cls, original = _reference(case, hf_dirs[case][1])
    reloaded = cls.from_pretrained(exported).eval()
    theirs, ours = original.state_dict(), reloaded.state_dict()
    assert sorted(theirs) == sorted(ours)
    for name in theirs:
        np.testing.assert_array_equal(theirs[name].numpy(), ours[name].numpy(), err_msg=name)
    if case != "bert_pretraining":
        inputs = bert_inputs(1) if family == "bert" else t5_inputs(1)
        expected = hf_outputs(case, original, inputs)
        for name, value in hf_outputs(case, reloaded, inputs).items():
            np.testing.assert_array_equal(value, expected[name], err_msg=name)

    second = str(tmp_path / "second")
    result = conversion.import_hf(family, exported, second, scan_layers=scan, **QUIET)
    assert result.fresh == ()  # the fresh pooler of "bert" went out with the export
    a, config_a, tokenizer_a = checkpoint.read_params_to_host(first)
    b, config_b, tokenizer_b = checkpoint.read_params_to_host(second)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert config_a["model"] == config_b["model"]
    assert config_a["tokenizer"] == config_b["tokenizer"] and tokenizer_a == tokenizer_b


# ---- every test above fails if a link were wrong --------------------------------------------

MUTATIONS = {
    "bert: MLM transform not transposed": ("bert", lambda ls: _transposed(
        ls, "mlm_head/transform/kernel")),
    "t5: encoder <-> decoder relative bias": ("t5", lambda ls: _swap(
        ls, "encoder/rel_bias/embedding", "decoder/rel_bias/embedding")),
    "t5_1_1: wi_0 <-> wi_1": ("t5_1_1", lambda ls: _swap(ls, "mlp/gate/kernel",
                                                         "mlp/up/kernel")),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_link_breaks_parity(hf_dirs, tmp_path, monkeypatch, mutation):
    case, fn = MUTATIONS[mutation]
    family = CASES[case][0]
    monkeypatch.setitem(mapping.CONVERTERS._entries, family, _mutated(mapping.get(family), fn))
    ckpt = str(tmp_path / "ckpt")
    conversion.import_hf(family, hf_dirs[case][0], ckpt, **QUIET)
    model, _, params = fmjax_model(ckpt)
    assert max_diffs(case, hf_dirs[case][1], model, params)["logits"] > 1e-2


# ---- refusals --------------------------------------------------------------------------------

REFUSED = [  # (case, --family, config.json edit, message)
    ("bert", "bert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ("bert", "bert", {"is_decoder": True}, "is_decoder = True"),
    ("bert", "bert", {"hidden_act": "gelu_new"}, "hidden_act = 'gelu_new'"),
    ("bert", "bert", {"tie_word_embeddings": False}, "tie_word_embeddings = False"),
    ("t5", "t5_1_1", {}, "feed_forward_proj = 'relu'.*--family=t5"),
    ("t5_1_1", "t5", {}, "feed_forward_proj = 'gated-gelu'.*--family=t5_1_1"),
    ("t5", "t5", {"feed_forward_proj": "gated-silu"}, "feed_forward_proj = 'gated-silu'"),
    ("t5", "t5", {"decoder_start_token_id": 5}, "decoder_start_token_id = 5"),
    ("t5", "bert", {}, "model_type = 't5'"),
]


@pytest.mark.parametrize("case,family,edit,message", REFUSED,
                         ids=[f"{r[1]}-{r[3].split(' ')[0]}" for r in REFUSED])
def test_unrepresentable_config_fields_are_refused(hf_dirs, tmp_path, case, family, edit,
                                                   message):
    with pytest.raises(mapping.UnsupportedHFConfig, match=message):
        import_edited(hf_dirs[case][0], tmp_path, family, edit)
    assert not os.path.exists(tmp_path / "out")


def _damaged(tensors):
    tensors["lm_head.weight"] = tensors["shared.weight"] + 1  # tied per config.json, but not
    return tensors


def _half_a_head(tensors):
    del tensors["cls.predictions.transform.dense.bias"]
    return tensors


@pytest.mark.parametrize("case,edit,message", [
    ("t5", _damaged, r"lm_head\.weight differs from shared\.weight"),
    ("bert_pretraining", _half_a_head, r"holds part of the bert mlm_head.*lacks "
                                       r"\['cls\.predictions\.transform\.dense\.bias'\]")],
    ids=["untied_copy", "half_a_head"])
def test_inconsistent_tensors_are_refused(hf_dirs, tmp_path, case, edit, message):
    source = str(tmp_path / "hf")
    shutil.copytree(hf_dirs[case][0], source)
    _rewrite(source, edit)
    with pytest.raises(mapping.MappingError, match=message):
        conversion.import_hf(CASES[case][0], source, str(tmp_path / "out"), **QUIET)
    assert not os.path.exists(tmp_path / "out")


# ---- the CLI ---------------------------------------------------------------------------------

def test_cli_import(hf_dirs, tmp_path):
    """The flags reach import_hf (--family, --noscan_layers) and the summary line names the
    stacks and what was initialised; export through the library is tested above."""
    ckpt = str(tmp_path / "ckpt")
    out = _cli("fmjax.convert", "import", "--family=bert", f"--hf_dir={hf_dirs['bert'][0]}",
               f"--output={ckpt}", "--noscan_layers")
    count = sum(p.numel() for p in hf_dirs["bert"][1].parameters()) + 32 * 33  # + pooler
    assert (f"bert, {count:,} parameters (float32), 2 layers, d_model 32, vocab 96; tokenizer: "
            "none; initialised: pooler") in out, out
    assert checkpoint.read_source(ckpt)[0]["model"]["scan_layers"] is False
