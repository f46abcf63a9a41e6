"""Quantization-aware training (fmjax/quantization/qat.py): the fake-quantized forward pass is
bit for bit the PTQ model's on the same float weights (plain models, LoRA-merged kernels, a
classifier's export through python -m fmjax.quantize's library), gradients pass straight
through the rounding, a few QAT steps lower the loss, and bad settings name their field."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import mesh as mesh_lib, models
from fmjax.config import ConfigError
from fmjax.models import classifier
from fmjax.nn import lora
from fmjax.quantization import checkpoint_io, integer_params, ptq, qat, schemes
from fmjax.training import checkpoint, engine as engine_lib
from tests.helpers import packed_batch, tiny_config
from tests.quantization.test_model import build


def qat_model(model, layouts, scheme, group):
    return qat.QatModel(model, layouts, schemes.get(scheme), group)


@pytest.mark.parametrize("family,model_kw,scheme,group", [
    ("gpt2", {}, "int8", 0), ("gpt2", {}, "int4", 16), ("llama", {"scan_layers": False}, "int8", 0)])
def test_fake_quantized_forward_is_the_ptq_models(family, model_kw, scheme, group):
    """Same float params: QAT's logits == the logits of the model holding PTQ's integers and
    scales (scanned gpt2: the per-layer scales of a stacked kernel; llama: untied head)."""
    model, mesh, params, layouts, inputs = build(family, **model_kw)
    qparams = integer_params.quantize_params(params, layouts, schemes.get(scheme), group)
    fake = qat_model(model, layouts, scheme, group)
    with mesh_lib.activate(mesh):
        ptq_logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(qparams,
                                                                                    *inputs))
        qat_logits = np.asarray(jax.jit(lambda p, x: fake.apply({"params": p}, x))(params,
                                                                                   *inputs))
        float_logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params,
                                                                                      *inputs))
    np.testing.assert_array_equal(qat_logits, ptq_logits)
    assert np.abs(qat_logits - float_logits).max() > 1e-4  # the rounding is really there


def test_gradients_pass_straight_through_the_rounding():
    """d loss / d w under QAT == the float model's gradient at the fake-quantized weights (the
    straight-through estimator), nonzero for every quantized weight, and not the gradient at
    the float weights."""
    model, mesh, params, layouts, inputs = build("gpt2")
    fake = qat_model(model, layouts, "int8", 0)
    probe = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 128))

    def loss(m, p):
        return jnp.sum(m.apply({"params": p}, *inputs) * probe)

    with mesh_lib.activate(mesh):
        fq_params = jax.jit(lambda p: qat.fake_quantize_params(
            p, layouts, schemes.get("int8"), 0))(params)
        g_qat = jax.jit(jax.grad(lambda p: loss(fake, p)))(params)
        g_at_fq = jax.jit(jax.grad(lambda p: loss(model, p)))(fq_params)
        g_float = jax.jit(jax.grad(lambda p: loss(model, p)))(params)
    flat = lambda t: {integer_params.leaf_key(k): np.asarray(v)  # noqa: E731
                      for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
    g_qat, g_at_fq, g_float = flat(g_qat), flat(g_at_fq), flat(g_float)
    assert set(layouts) <= set(g_qat) and len(layouts) == 8  # 6 block kernels + 2 tables
    for key, g in g_qat.items():
        np.testing.assert_allclose(g, g_at_fq[key], rtol=1e-5, atol=1e-6, err_msg=key)
        assert g.dtype == np.float32
    for key in layouts:
        assert np.abs(g_qat[key]).max() > 0, key
    assert any(np.abs(g_qat[k] - g_float[k]).max() > 1e-5 for k in layouts)


def test_a_few_qat_steps_lower_the_loss():
    config = tiny_config()
    config.qat.scheme = "int8"
    mesh = mesh_lib.make_mesh(config, jax.devices()[:1])
    model, cfg = models.build(config)
    wrapped = qat.wrap(config, model, cfg.seq_len, mesh)
    assert isinstance(wrapped, qat.QatModel)
    engine = engine_lib.build(config, mesh, model=wrapped, model_config=cfg)
    state = engine.init_state()
    batch = {k: jax.device_put(v, engine.batch_sharding) for k, v in packed_batch().items()}
    losses = []
    for _ in range(5):
        state, metrics = engine.run_train_step(state, batch)
        losses.append(float(metrics["loss"]))
        assert float(metrics["grad_norm"]) > 0
    assert losses[-1] < losses[0] - 0.1, losses
    kernel = state.params["layers"]["mlp"]["up"]["kernel"]
    assert kernel.dtype == jnp.float32  # the master weights stay float, off the int8 grid
    fq = qat.fake_quantize(kernel, wrapped.layouts["layers/mlp/up/kernel"], wrapped.scheme, 0)
    assert not np.array_equal(np.asarray(kernel), np.asarray(fq))


def test_with_lora_the_merged_kernel_is_quantized():
    """LoRA folds its adapters in first: QAT over LoRA == PTQ of the merged export."""
    model, mesh, params, layouts, inputs = build("gpt2")
    config = tiny_config()
    config.lora.rank = 4
    wrapped = lora.LoraModel(qat_model(model, layouts, "int8", 0), config.lora)
    with mesh_lib.activate(mesh):
        boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs)["params"])
        adapters = nn.unbox(lora.init_adapters(boxed, 4, config.lora.targets,
                                               jax.random.PRNGKey(2)))
        adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(
            jax.random.PRNGKey(3), x.shape), adapters)  # B != 0: the adapters change W
        state_params = {lora.MODEL_KEY: params, lora.LORA_KEY: adapters}
        merged = lora.merge_state_params(state_params, config.lora)
        qparams = integer_params.quantize_params(merged, layouts, schemes.get("int8"), 0)
        qat_logits = np.asarray(jax.jit(lambda p, x: wrapped.apply({"params": p}, x))(
            state_params, *inputs))
        ptq_logits = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(
            qparams, *inputs))
        quantized_first = integer_params.quantize_params(params, layouts, schemes.get("int8"), 0)
    np.testing.assert_allclose(qat_logits, ptq_logits, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(quantized_first["layers"]["attn"]["query"]["kernel"],
                              qparams["layers"]["attn"]["query"]["kernel"])


def test_a_classifier_export_quantizes_head_included_as_qat_computes(tmp_path):
    """python -m fmjax.quantize's library on a classification fine-tune's export (backbone +
    head): every kernel, the head's too, is quantized, and the quantized classifier's logits
    are QAT's on the float export's weights."""
    config = tiny_config()
    config.task.name = "classification"
    config.mesh.data = -1
    model, cfg = classifier.build_classifier(config, 3)
    mesh = mesh_lib.make_mesh(config)
    engine = engine_lib.build(config, mesh, model=model, model_config=cfg,
                              objective=object())  # never trains: its step is never traced
    with mesh_lib.activate(mesh):
        params = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 32), jnp.int32))["params"]))()
    source = checkpoint.export_params(str(tmp_path / "float"), jax.device_get(params),
                                      config.to_dict(), b"")
    result = ptq.quantize_checkpoint(source, str(tmp_path / "int8"), "int8")
    assert result.weights == 9  # 6 block kernels, 2 tables (tokens, positions), the head
    engine_q, qparams = checkpoint_io.load_for_engine(
        engine, result.path, checkpoint.read_source(result.path)[0])
    assert qparams["head"]["kernel"].dtype == jnp.int8
    assert qparams["head"]["kernel_scale"].shape == (1, 3)
    fake = qat.wrap(_with_qat(config), model, cfg.seq_len, mesh)
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, 128, (8, 32)), jnp.int32)
    with mesh_lib.activate(mesh):
        int8_logits = np.asarray(jax.jit(lambda p, x: engine_q.model.apply({"params": p}, x))(
            qparams, tokens))
        qat_logits = np.asarray(jax.jit(lambda p, x: fake.apply({"params": p}, x))(
            params, tokens))
    np.testing.assert_array_equal(int8_logits, qat_logits)


def _with_qat(config, scheme="int8"):
    config = config.copy_and_resolve_references()
    config.qat.scheme = scheme
    return config


def test_off_by_default_and_bad_settings_name_their_field():
    config = tiny_config()
    model, cfg = models.build(config)
    mesh = mesh_lib.make_mesh(config, jax.devices()[:1])
    assert qat.wrap(config, model, cfg.seq_len, mesh) is model
    with pytest.raises(ConfigError, match=r"config.qat.scheme = 'int3'.*int4, int8"):
        qat.wrap(_with_qat(config, "int3"), model, cfg.seq_len, mesh)
    bad = _with_qat(config, "int4")
    bad.qat.group_size = 24  # does not divide d_model 32
    with pytest.raises(schemes.GroupSizeError,
                       match=r"--config.qat.group_size=24: .*use --config.qat.group_size in "
                             r"\{8, 16, 32\}.*--config.qat.scheme=int8"):
        qat.wrap(bad, model, cfg.seq_len, mesh)


def test_pretraining_refuses_it_before_writing_anything(tmp_path):
    from fmjax.training import pretrain_stage
    config = _with_qat(tiny_config())
    config.mesh.data = -1  # valid otherwise
    with pytest.raises(ConfigError, match=r"config.qat.scheme = 'int8': quantization-aware "
                                          r"training is a fine-tune option"):
        pretrain_stage.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
