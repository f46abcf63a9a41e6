"""Switch Transformer (fmjax/hf/switch.py): a tiny random transformers
SwitchTransformersForConditionalGeneration (every weight random, routers and norms included),
sparse every other block or every block, with an expert_capacity small enough that HF drops
most tokens, imported scanned and unrolled gives its logits to 1e-4 (fmjax's moe.row_capacity
drops the same tokens; without it the logits differ); import -> export gives back its tensors
exactly; HF configs fmjax cannot compute, and fmjax models HF Switch cannot hold, are refused."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmjax import config as config_lib, models  # noqa: E402
from fmjax.hf import conversion, mapping, tiny_models  # noqa: E402
from fmjax.nn import moe as moe_lib  # noqa: E402
from fmjax.training import checkpoint  # noqa: E402

VOCAB, CAPACITY = 96, 4
QUIET = dict(log=lambda msg: None)
SPARSE = {  # case: (encoder layers, decoder layers, sparse encoder layers, sparse decoder layers)
    "every_other": (4, 2, 2, 1),  # the released models' step 2
    "every": (2, 2, 2, 2),  # step 1
}


@pytest.fixture(scope="module", params=list(SPARSE))
def hf_dir(request, tmp_path_factory):
    enc, dec, sparse_enc, sparse_dec = SPARSE[request.param]
    torch.manual_seed(0)
    model = tiny_models.randomize(transformers.SwitchTransformersForConditionalGeneration(
        transformers.SwitchTransformersConfig(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=enc,
            num_decoder_layers=dec, num_sparse_encoder_layers=sparse_enc,
            num_sparse_decoder_layers=sparse_dec, num_experts=4, expert_capacity=CAPACITY,
            relative_attention_num_buckets=8, relative_attention_max_distance=20)), 0)
    directory = str(tmp_path_factory.mktemp("hf") / request.param)
    model.save_pretrained(directory)
    return directory, model, request.param


def inputs():
    rng = np.random.default_rng(0)
    decoder = rng.integers(0, VOCAB, (2, 17))
    decoder[:, 0] = 0  # the start id
    return rng.integers(0, VOCAB, (2, 24)), decoder


def fm_logits(ckpt, row_capacity=None):
    """(logits, dropped assignments) of the checkpoint (row_capacity: overridden)."""
    params, config_dict, _ = checkpoint.read_params_to_host(ckpt)
    config = config_lib.from_json_dict(config_dict)
    if row_capacity is not None:
        config.model.moe.row_capacity = row_capacity
    model, cfg = models.build(config)
    x, y = (jnp.asarray(a, jnp.int32) for a in inputs())
    logits, aux = jax.jit(lambda p: model.apply({"params": p}, x, y, mutable=[moe_lib.AUX]))(
        params)
    return np.asarray(logits), int(moe_lib.aux_metrics(aux[moe_lib.AUX])["dropped"]), cfg


def hf_logits(model):
    x, y = (torch.tensor(a, dtype=torch.long) for a in inputs())
    with torch.no_grad():
        return model(input_ids=x, decoder_input_ids=y).logits.float().numpy()


@pytest.mark.parametrize("scan", [True, False])
def test_import_gives_transformers_logits(hf_dir, tmp_path, scan):
    directory, model, case = hf_dir
    out = str(tmp_path / "ckpt")
    result = conversion.import_hf("switch", directory, out, scan_layers=scan, **QUIET)
    assert result.num_params == sum(p.numel() for p in model.parameters())
    ours, dropped, cfg = fm_logits(out)
    moe = cfg.moe
    assert (moe.num_experts, moe.top_k, moe.interval, moe.renormalize, moe.row_capacity) == (
        4, 1, 2 if case == "every_other" else 1, False, CAPACITY)
    theirs = hf_logits(model)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert dropped > 0  # HF dropped tokens past its capacity, and fmjax the same ones
    dropless, none_dropped, _ = fm_logits(out, row_capacity=0)
    assert none_dropped == 0 and np.abs(dropless - theirs).max() > 1e-2


def test_export_gives_back_the_tensors(hf_dir, tmp_path):
    directory, model, case = hf_dir
    first = str(tmp_path / "first")
    conversion.import_hf("switch", directory, first, scan_layers=case == "every", **QUIET)
    exported = str(tmp_path / "exported")
    conversion.export_hf("switch", first, exported, **QUIET)
    hf_config = json.load(open(os.path.join(exported, "config.json")))
    assert (hf_config["model_type"], hf_config["num_experts"], hf_config["expert_capacity"]) \
        == ("switch_transformers", 4, CAPACITY)
    reloaded = transformers.SwitchTransformersForConditionalGeneration.from_pretrained(
        exported).eval()
    assert (reloaded.config.encoder_sparse_step, reloaded.config.decoder_sparse_step) == (
        (model.config.encoder_sparse_step, model.config.decoder_sparse_step))
    theirs, ours = model.state_dict(), reloaded.state_dict()
    assert sorted(theirs) == sorted(ours)
    for name in theirs:
        np.testing.assert_array_equal(theirs[name].numpy(), ours[name].numpy(), err_msg=name)
    np.testing.assert_array_equal(hf_logits(reloaded), hf_logits(model))
    second = str(tmp_path / "second")
    conversion.import_hf("switch", exported, second, scan_layers=case == "every", **QUIET)
    a, _, _ = checkpoint.read_params_to_host(first)
    b, _, _ = checkpoint.read_params_to_host(second)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("changes,match", [
    (dict(encoder_sparse_step=3, decoder_sparse_step=3), "encoder_sparse_step = 3"),
    (dict(decoder_sparse_step=1), "decoder_sparse_step = 1: .* the encoder's step is 2"),
    (dict(router_bias=True), "router_bias = True"),
    (dict(dense_act_fn="gated-gelu"), "dense_act_fn = 'gated-gelu'"),
    (dict(num_layers=3, num_sparse_encoder_layers=1, encoder_sparse_step=2),
     r"num_layers = 3: .*\(not a multiple of the sparse step 2"),
])
def test_unrepresentable_hf_configs_are_refused(changes, match):
    hf = {**transformers.SwitchTransformersConfig(
        num_layers=4, num_decoder_layers=4, num_sparse_encoder_layers=2,
        num_sparse_decoder_layers=2).to_dict(), **changes}
    with pytest.raises(mapping.UnsupportedHFConfig, match=match):
        mapping.get("switch").config_from_hf(hf)


def _cfg(family, **moe):
    config = config_lib.base_config()
    config.model.family = family
    config.model.update(n_layers=2, n_decoder_layers=2)
    config.model.moe.update({**dict(num_experts=4, top_k=1, interval=2, renormalize=False),
                             **moe})
    return models.build(config)[1]


def test_models_hf_cannot_hold_are_refused():
    with pytest.raises(mapping.UnsupportedHFConfig, match="top_k 1"):
        mapping.get("switch").config_to_hf(_cfg("switch", top_k=2))
    with pytest.raises(mapping.UnsupportedHFConfig, match="family = switch"):
        mapping.get("t5").config_to_hf(_cfg("t5"))
    cfg = _cfg("switch", capacity_factor=1.25)  # HF's capacity: seq_len (drops none)
    hf = mapping.get("switch").config_to_hf(cfg)
    assert (hf["expert_capacity"], hf["encoder_sparse_step"]) == (cfg.seq_len, 2)


def test_switch_base_8_maps_onto_transformers_switch_base_8():
    """configs/switch_base_8.py exported as config.json builds (on torch's meta device: nothing
    allocated) an HF model with exactly the tensors the mapping writes, 619,339,008 params."""
    from fmjax.training import state as state_lib
    configs = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    config = config_lib.sibling_config(os.path.join(configs, "x.py"), "switch_base_8")
    model, cfg = models.build(config)
    abstract, _ = state_lib.abstract_params(model, cfg.seq_len)
    converter = mapping.get("switch")
    plan = mapping.plan(converter.links(cfg), conversion._leaf_shapes(abstract), scan_layers=True,
                        vocab_size=cfg.vocab_size, family="switch")
    hf_config = transformers.SwitchTransformersConfig(**converter.config_to_hf(cfg))
    with torch.device("meta"):
        hf = transformers.SwitchTransformersForConditionalGeneration(hf_config)
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    theirs = {n: tuple(p.shape) for n, p in hf.state_dict().items() if n not in tied}
    assert theirs == plan.hf_shapes
    assert sum(p.numel() for p in hf.parameters()) == 619_339_008


def test_greedy_generation_equals_transformers(hf_dir, tmp_path):
    """KV-cached decoding of the imported model = transformers' cached greedy `generate`:
    the encoder runs once with HF's capacity (dropping what HF drops), and each decoding step
    routes its one new token (neither side caps a step's single token)."""
    from fmjax.generation import sampling
    directory, model, _ = hf_dir
    ckpt = str(tmp_path / "ckpt")
    conversion.import_hf("switch", directory, ckpt, **QUIET)
    params, config_dict, _ = checkpoint.read_params_to_host(ckpt)
    fm_model, _ = models.build(config_lib.from_json_dict(config_dict))
    prompts = np.random.default_rng(1).integers(3, VOCAB, (3, 12))  # no pad (0) or eos (1)
    ours = np.asarray(sampling.generate_encoder_decoder(
        fm_model, params, jnp.asarray(prompts, jnp.int32), jax.random.PRNGKey(0),
        max_new_tokens=8, eos_id=1, temperature=0.0))
    with torch.no_grad():
        theirs = model.generate(torch.tensor(prompts), max_new_tokens=8, do_sample=False,
                                use_cache=True, decoder_start_token_id=0).numpy()[:, 1:]
    np.testing.assert_array_equal(ours, np.pad(theirs, ((0, 0), (0, 8 - theirs.shape[1]))))
