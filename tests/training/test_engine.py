"""The engine ties a family to an objective: kinds must agree, and the MFU's FLOP count follows
the rows the objective builds (an encoder-decoder counts each stack over its own tokens)."""
import jax
import pytest

from fmjax.models import flops
from fmjax.training import engine as engine_lib
from fmjax import mesh as mesh_lib
from fmjax.config import ConfigError
from tests.helpers import tiny_config


def build(config):
    return engine_lib.build(config, mesh_lib.make_mesh(config, jax.devices()[:1]))


def test_an_objective_for_another_kind_of_model_is_refused():
    config = tiny_config("gpt2")
    config.objective = "mlm"
    config.tokenizer.extra_ids = 1
    with pytest.raises(ConfigError, match=r"config\.objective = 'mlm' trains encoder models but "
                                          r"config\.model\.family = 'gpt2' is of kind decoder"):
        build(config)


def test_decoder_flops_are_6n_plus_attention_per_token():
    engine = build(tiny_config("llama"))
    cfg = engine.model_config
    assert engine.row_length() == cfg.seq_len
    assert engine.tokens_per_step() == 8 * cfg.seq_len
    assert engine.flops_per_token() == 6 * engine.num_params() + 12 * 2 * 32 * 32


def test_encoder_decoder_flops_count_each_stack_over_its_own_tokens():
    config = tiny_config("t5", n_decoder_layers=3, d_ff=48)
    config.objective = "span_corruption"
    config.tokenizer.extra_ids = 16
    engine = build(config)
    r = engine.row_length()
    noise = round(0.15 * r)
    spans = round(noise / 3)
    s, t = r - noise + spans, noise + spans  # encoder = seq_len, decoder = noise + sentinels
    assert s == 32 and engine.tokens_per_step() == 8 * r
    d, f, v = 32, 48, 128
    enc_block, dec_block = 4 * d * d + 2 * d * f, 8 * d * d + 2 * d * f
    by_hand = (6 * (2 * enc_block * s + (3 * dec_block + v * d) * t)
               + 12 * d * (2 * s * s + 3 * (t * t + t * s)))
    assert engine.flops_per_token() * r == pytest.approx(by_hand, rel=1e-12)
    # the per-stack count is below 6 N per raw token: decoder weights see only t tokens
    assert engine.flops_per_token() < flops.flops_per_token(
        engine.model_config, engine.num_params(), 0)


def test_device_peak_splits_a_chip_shown_as_two_devices():
    """MFU divides by the peak of the devices a process drives: a TPU7x chip is two JAX
    devices, so 8 devices are 4 chips' worth, not 8."""
    from types import SimpleNamespace

    from fmjax.training import peak_flops as flops
    tpu7x, v5p = SimpleNamespace(device_kind="TPU7x"), SimpleNamespace(device_kind="TPU v5")
    assert flops.device_peak(tpu7x) == flops.chip_peak(tpu7x) / 2 == 2307e12 / 2
    assert flops.device_peak(v5p) == flops.chip_peak(v5p)
    assert flops.device_peak(SimpleNamespace(device_kind="mystery")) is None
