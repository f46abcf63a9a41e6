"""Issue 23, item 1: the fine-tune stage loads a quantized checkpoint (QLoRA). Over the tiny
imported GPT-2's int4 export (groups of 32) on a data x fsdp mesh: the base stays the
checkpoint's integers bit for bit, only the float adapters train and the loss falls; the
model computes exactly dequantize(base) + (alpha / rank) A @ B (against LoRA's float fold on
the dequantized weights); a run killed after a checkpoint resumes bit for bit (int4 leaves in
the train state and its checksums); the best/ export is a quantized checkpoint with the
adapters beside their kernels, which the loaders score exactly as the run did and which
generates the tokens of the float model of dequantize(base) + A @ B."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import mesh as mesh_lib, models
from fmjax.config import ConfigError, base_config
from fmjax.generation import loading, server
from fmjax.nn import lora
from fmjax.quantization import guard, integer_params, qlora, weights
from fmjax.tasks import checkpoint_eval
from fmjax.training import checkpoint
from tests.helpers import (assert_trees_bitwise_equal, finetune_keeping_final as finetune,
                           metrics_rows, preempted_and_resumed)

pytestmark = pytest.mark.slow


def qlora_config(base: str, data_dir: str, steps: int = 6):
    c = base_config()
    c.init_from = base
    c.task.name = "lm"
    c.data.tfds_data_dir = data_dir
    c.mesh.data, c.mesh.fsdp = 4, 2
    c.train.update(steps=steps, global_batch_size=8, log_every=1, eval_every=3,
                   eval_batches=1, checkpoint_every=3, sample_tokens=0)
    c.optim.update(learning_rate=1e-2, warmup_steps=0)
    c.lora.update(rank=4, alpha=8.0)
    return c


def dequantized(params, layouts):
    """`params` with every quantized kernel replaced by its float dequantization, plus A @ B
    where adapters sit beside it (siblings dropped): the float reference."""
    out = integer_params.mutable(params)
    for key in layouts:
        module, name = key.rsplit("/", 1)
        siblings = integer_params.get_leaf(out, module)
        w = weights.dequantize(jnp.asarray(siblings.pop(name)),
                               jnp.asarray(siblings.pop(name + weights.SCALE_SUFFIX)))
        if lora.A_SIBLING in siblings:
            a, b = (jnp.asarray(siblings.pop(k)) for k in (lora.A_SIBLING, lora.B_SIBLING))
            w = w + lora.low_rank_delta(a, b, lead=a.ndim + b.ndim - 2 - w.ndim)
        siblings[name] = w
    return out


def test_qlora_trains_adapters_over_the_frozen_int4_base(quantized, data_dir, tmp_path,
                                                         monkeypatch):
    base = quantized["int4"].path
    workdir, final = str(tmp_path / "full"), []
    report = finetune(qlora_config(base, data_dir), workdir, final)
    state = final[0]
    stored, config_dict, _ = checkpoint.read_params_to_host(base)

    # the base is the checkpoint's integers and scales, untouched; the adapters trained
    assert_trees_bitwise_equal(state.params[lora.MODEL_KEY], stored)
    assert str(state.params[lora.MODEL_KEY]["layers"]["attn"]["query"]["kernel"].dtype) == "int4"
    trained_b = [np.any(b != 0) for path, b in jax.tree_util.tree_flatten_with_path(
        state.params[lora.LORA_KEY])[0] if path[-1].key == lora.B_KEY]
    assert len(trained_b) == 6 and all(trained_b)  # query, key, value, out, up, down (stacked)
    losses = {r["step"]: r["loss"] for r in metrics_rows(workdir) if "loss" in r}
    assert losses[6] < losses[1]

    # the model computes dequantize(base) + (alpha / rank) A @ B: LoRA's float fold agrees
    config = qlora_config(base, data_dir)
    saved = {k: v for k, v in config_dict.items() if k != guard.KEY}
    from fmjax.training import finetune_stage
    config = finetune_stage.inherit_pretrained(config, saved)
    model, cfg = models.build(config)
    mesh = mesh_lib.make_mesh(config)
    layouts, _ = integer_params.layouts(model, cfg.seq_len, mesh)
    tokens_BT = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, cfg.vocab_size)
    quantized_model = lora.LoraModel(qlora.wrap(guard.quantization_of(config_dict), model,
                                                cfg.seq_len, mesh, ()), config.lora)
    logits_q = quantized_model.apply({"params": state.params}, tokens_BT)
    float_base = dequantized(state.params[lora.MODEL_KEY], layouts)
    logits_f = model.apply({"params": lora.merge(float_base, state.params[lora.LORA_KEY],
                                                 8.0, 4)}, tokens_BT)
    np.testing.assert_allclose(np.asarray(logits_q), np.asarray(logits_f), rtol=2e-5,
                               atol=2e-5)

    # killed after the step-3 checkpoint and resumed: bit for bit (int4 leaves included)
    killed = str(tmp_path / "killed")
    resumed = preempted_and_resumed(monkeypatch, 3, qlora_config(base, data_dir), killed)
    assert {r["step"]: r["loss"] for r in metrics_rows(killed) if "loss" in r} == losses
    assert_trees_bitwise_equal(resumed, state)

    # best/: a quantized checkpoint with the adapters beside their kernels, scored as the run
    best = report.best_dir
    entry = guard.quantization_of(checkpoint.read_source(best)[0])
    assert (entry["scheme"], entry["adapters"], entry["float_weights"], entry["base"]) == (
        "int4", {"rank": 4, "targets": ["query", "key", "value", "out", "up", "gate", "down"]},
        [], base)
    scored = checkpoint_eval.evaluate_checkpoint(best, tfds_data_dir=data_dir)
    assert scored["quantization"] == "int4, groups of 32, LoRA rank 4"
    assert scored["eval_loss"] == pytest.approx(report.best["eval_loss"], rel=1e-6)
    engine, params, tokenizer, _ = loading.load_run(best)
    kernel = params["layers"]["attn"]["query"]
    assert str(kernel["kernel"].dtype) == "int4" and kernel["kernel_lora_a"].dtype == jnp.float32
    # and generates what the float model of dequantize(base) + A @ B generates
    prompts = ["def f(x):", "import os"]
    served = server.Generator.from_engine(engine, params, tokenizer).generate(
        prompts, max_new_tokens=8, ignore_eos=True)
    reference = server.Generator(model, engine.config, cfg, dequantized(params, layouts),
                                 tokenizer).generate(prompts, max_new_tokens=8, ignore_eos=True)
    assert [c[0].token_ids for c in served] == [c[0].token_ids for c in reference]


def test_a_classifier_trains_its_float_head_over_the_int8_base(quantized, data_dir, tmp_path):
    """A new head is not part of the quantized base: it trains in float and its export keeps
    it float (float_weights), beside the int8 base and its adapters; the text tools refuse
    the classifier by name."""
    config = qlora_config(quantized["int8"].path, data_dir, steps=4)
    config.task.update(name="classification", select_metric="eval_f1")
    config.data.update(source="stdlib_functions", validation_percent=20, max_examples=96)
    config.train.eval_every = 2
    report = finetune(config, str(tmp_path / "cls"), [])
    entry = guard.quantization_of(checkpoint.read_source(report.best_dir)[0])
    assert (entry["scheme"], entry["float_weights"], entry["weights"]) == (
        "int8", ["head/kernel"], quantized["int8"].weights)
    scored = checkpoint_eval.evaluate_checkpoint(report.best_dir, tfds_data_dir=data_dir)
    for key in ("eval_accuracy", "eval_f1"):
        assert scored[key] == report.best[key], key
    assert scored["eval_loss"] == pytest.approx(report.best["eval_loss"], rel=1e-6)
    # a label head generates no text: the loaders of evaluate/generate/export refuse it
    with pytest.raises(ConfigError, match=r"is a classification fine-tune \(config.task.name = "
                       r"'classification'\): .* pass the language model it was fine-tuned from "
                       rf"\({quantized['int8'].path}\)"):
        loading.load_run(report.best_dir)
