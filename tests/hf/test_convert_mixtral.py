"""Mixtral (fmjax/hf/mixtral.py): a tiny random transformers.MixtralForCausalLM (every weight
random, routers and norms included) imported scanned and unrolled gives its logits to 1e-4;
import -> export gives back its tensors exactly (one HF tensor per expert, stacked in fmjax);
an HF config fmjax cannot compute is refused."""
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
from fmjax.training import checkpoint  # noqa: E402

VOCAB = 96
QUIET = dict(log=lambda msg: None)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_models.randomize(transformers.MixtralForCausalLM(transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_local_experts=4, num_experts_per_tok=2, rms_norm_eps=1e-5)), 0)
    directory = str(tmp_path_factory.mktemp("hf") / "mixtral")
    model.save_pretrained(directory)
    return directory, model


def logits_of(ckpt, ids):
    params, config_dict, _ = checkpoint.read_params_to_host(ckpt)
    model, cfg = models.build(config_lib.from_json_dict(config_dict))
    return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids, jnp.int32))), cfg


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


@pytest.mark.parametrize("scan", [True, False])
def test_import_gives_transformers_logits(hf_dir, tmp_path, scan):
    directory, model = hf_dir
    out = str(tmp_path / "ckpt")
    result = conversion.import_hf("mixtral", directory, out, scan_layers=scan, **QUIET)
    assert result.num_params == sum(p.numel() for p in model.parameters())
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, 24))
    ours, cfg = logits_of(out, ids)
    assert (cfg.moe.num_experts, cfg.moe.top_k, cfg.moe.interval) == (4, 2, 1)
    np.testing.assert_allclose(ours, hf_logits(model, ids), rtol=1e-4, atol=1e-4)


def test_export_gives_back_the_tensors(hf_dir, tmp_path):
    directory, model = hf_dir
    first = str(tmp_path / "first")
    conversion.import_hf("mixtral", directory, first, **QUIET)
    exported = str(tmp_path / "exported")
    conversion.export_hf("mixtral", first, exported, **QUIET)
    hf_config = json.load(open(os.path.join(exported, "config.json")))
    assert (hf_config["model_type"], hf_config["num_local_experts"]) == ("mixtral", 4)
    reloaded = transformers.MixtralForCausalLM.from_pretrained(exported).eval()
    theirs, ours = model.state_dict(), reloaded.state_dict()
    assert sorted(theirs) == sorted(ours)
    for name in theirs:
        np.testing.assert_array_equal(theirs[name].numpy(), ours[name].numpy(), err_msg=name)
    second = str(tmp_path / "second")
    conversion.import_hf("mixtral", exported, second, **QUIET)
    a, _, _ = checkpoint.read_params_to_host(first)
    b, _, _ = checkpoint.read_params_to_host(second)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_unrepresentable_configs_are_refused(hf_dir, tmp_path):
    directory, _ = hf_dir
    with pytest.raises(mapping.UnsupportedHFConfig, match="sliding_window = 4096"):
        conversion.hf_to_config(mapping.get("mixtral"), _Dir(directory, sliding_window=4096),
                                scan_layers=True, param_dtype="float32")
    config = config_lib.base_config()
    config.model.family = "mixtral"
    config.model.moe.update(num_experts=4, interval=2)
    config.model.n_layers = 2
    _, cfg = models.build(config)
    with pytest.raises(mapping.UnsupportedHFConfig, match="interval 1"):
        mapping.get("mixtral").config_to_hf(cfg)


class _Dir:
    """An HF directory's config with fields changed (no weights are read)."""
    def __init__(self, directory, **changes):
        self.path = directory
        self.config = {**json.load(open(os.path.join(directory, "config.json"))), **changes}
