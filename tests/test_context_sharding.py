"""Context parallelism end to end: with the sequence split over mesh.context = 2, 4, 8 (alone
and beside data, fsdp, expert and tensor) the train step gives the losses and gradient norms of
one device on packed rows (three documents and padding per row, cut across the shards), for a
causal decoder (GPT-2, Llama with grouped-query attention), a prefix LM, BERT's masked LM and a
mixture of experts; the configurations it cannot run are refused before anything compiles."""
import jax
import numpy as np
import pytest

from fmjax import mesh as mesh_lib
from fmjax.config import ConfigError
from fmjax.nn import context_attention
from fmjax.training import engine as engine_lib
from tests.helpers import tiny_config

MESHES = [dict(context=2), dict(context=4), dict(context=8), dict(data=2, context=2, tensor=2),
          dict(fsdp=2, context=4)]
CASES = {"gpt2": ("gpt2", "causal_lm", {}), "llama_gqa": ("llama", "causal_lm", {"n_kv_heads": 4}),
         "prefix_lm": ("llama", "prefix_lm", {}), "bert_mlm": ("bert", "mlm", {})}


def case_config(case):
    family, objective, model = CASES[case]
    config = tiny_config(family, **model)
    config.objective = objective
    config.tokenizer.extra_ids = 1  # mlm's [MASK] id
    return config


def packed_rows(batch=8, seq=32, vocab=128, seed=0):
    """Each row: three documents of different lengths, then padding (segment 0)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab - 1, (batch, seq)).astype(np.int32)
    segment_ids = np.zeros((batch, seq), np.int32)
    positions = np.zeros((batch, seq), np.int32)
    for b in range(batch):
        cuts = [0, 3 + 2 * b, 17 + b % 5, seq - b % 4]
        for s in range(3):
            segment_ids[b, cuts[s]:cuts[s + 1]] = s + 1
            positions[b, cuts[s]:cuts[s + 1]] = np.arange(cuts[s + 1] - cuts[s])
    return {"tokens": np.where(segment_ids > 0, tokens, 0), "segment_ids": segment_ids,
            "positions": positions}


def losses_on_mesh(config, axes: dict, steps=3):
    """(loss, grad norm) per step of `steps` on one repeated batch, on the mesh `axes`
    (unnamed axes 1), and how many attention calls took the context-parallel path."""
    config.mesh.update({a: axes.get(a, 1) for a in mesh_lib.MESH_AXES})
    n = int(np.prod(list(axes.values()) or [1]))
    engine = engine_lib.build(config, mesh_lib.make_mesh(config, jax.devices()[:n]))
    state = engine.init_state()
    out = []
    for _ in range(steps):
        batch = {k: jax.device_put(v, engine.batch_sharding) for k, v in packed_rows().items()}
        state, metrics = engine.run_train_step(state, batch)
        out.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return np.asarray(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_losses_equal_one_device_with_the_sequence_split(case, monkeypatch):
    calls = []
    original = context_attention.context_attention
    monkeypatch.setattr(context_attention, "context_attention",
                        lambda *a, **kw: calls.append(kw["layout"]) or original(*a, **kw))
    reference = losses_on_mesh(case_config(case), {})
    assert reference[-1, 0] < reference[0, 0]  # it trains
    assert not calls
    for axes in MESHES:
        losses = losses_on_mesh(case_config(case), axes)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f"mesh {axes}")
    # traced through the context-parallel attention; decoders in zigzag order, BERT in order
    assert set(calls) == {"contiguous" if case == "bert_mlm" else "zigzag"}


@pytest.mark.slow
def test_mixture_of_experts_with_the_sequence_split():
    """Dropless MoE layers see a split sequence as more tokens per expert group."""
    def config():
        config = tiny_config("llama", n_kv_heads=4)
        config.model.moe.update(dict(num_experts=8, top_k=2))
        return config
    reference = losses_on_mesh(config(), {})
    for axes in (dict(context=2), dict(expert=2, context=4)):
        np.testing.assert_allclose(losses_on_mesh(config(), axes), reference, rtol=1e-5,
                                   err_msg=f"mesh {axes}")


def build_error(config, **axes) -> str:
    config.mesh.update({a: axes.get(a, 1) for a in mesh_lib.MESH_AXES})
    n = int(np.prod(list(axes.values())))
    with pytest.raises(ConfigError) as e:
        engine_lib.build(config, mesh_lib.make_mesh(config, jax.devices()[:n]))
    return str(e.value)


def test_refusals_name_the_field_value_and_fix():
    config = tiny_config("llama", seq_len=36)  # 36 = 9 x 4: not a multiple of 2 x 4
    message = build_error(config, context=4)
    assert "config.model.seq_len = 36" in message and "2 x mesh.context" in message
    assert "--config.model.seq_len=40" in message
    for impl in ("fused_cpu", "splash", "cudnn"):
        message = build_error(tiny_config("llama", attention_impl=impl), context=2)
        assert f"config.model.attention_impl = '{impl}'" in message
        assert "--config.model.attention_impl=xla" in message
    message = build_error(tiny_config("gpt2", dropout=0.1), context=2)
    assert "config.model.dropout = 0.1" in message and "--config.model.dropout=0" in message


def test_encoder_decoder_is_refused_when_traced():
    """T5's cross-attention and relative position biases have no context-parallel path."""
    config = tiny_config("t5")
    config.objective = "span_corruption"
    config.tokenizer.extra_ids = 8
    message = build_error(config, context=2)
    assert "config.mesh.context = 2" in message and "--config.mesh.context=1" in message
    assert "encoder-decoder" in message
