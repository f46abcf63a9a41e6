"""Results must not depend on the mesh: the same losses on 1 device and on 8 devices laid out
as (data, fsdp, tensor) = (2,2,2), (8,1,1), (1,8,1), (1,1,8); a mixture of experts the same
with its experts split over mesh.expert = 2, 4, 8 beside data, fsdp and tensor."""
import jax
import numpy as np
import pytest

from fmjax.training import engine as engine_lib
from fmjax import mesh as mesh_lib
from tests.helpers import packed_batch, tiny_config

MESHES = [(2, 2, 2), (8, 1, 1), (1, 8, 1), (1, 1, 8)]


def losses_on_mesh(config, shape, steps=4):
    """shape: (data, fsdp, tensor), or (data, fsdp, expert, tensor)."""
    axes = ("data", "fsdp", "tensor") if len(shape) == 3 else ("data", "fsdp", "expert", "tensor")
    config.mesh.update(dict(zip(axes, shape)))
    n = int(np.prod(shape))
    mesh = mesh_lib.make_mesh(config, jax.devices()[:n])
    engine = engine_lib.build(config, mesh)
    state = engine.init_state()
    out = []
    for step in range(steps):
        batch = packed_batch(seed=0)  # one batch repeated: the loss must fall
        batch = {k: jax.device_put(v, engine.batch_sharding) for k, v in batch.items()}
        state, metrics = engine.run_train_step(state, batch)
        out.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return np.asarray(out), state


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_losses_equal_across_meshes(family):
    config = tiny_config(family)
    reference, ref_state = losses_on_mesh(config, (1, 1, 1))
    assert reference[-1, 0] < reference[0, 0]  # it trains
    for shape in MESHES:
        losses, state = losses_on_mesh(tiny_config(family), shape)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f"mesh {shape}")
    # the parameters really are sharded on the last mesh: embed over fsdp / heads over tensor
    q_kernel = state.params["layers"]["attn"]["query"]["kernel"]
    assert q_kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q_kernel.addressable_shards[0].data.shape == (2, 32, 1, 4)  # 8 heads over 8 devices


@pytest.mark.slow
def test_grouped_query_attention_equal_across_meshes():
    config = tiny_config("llama", n_kv_heads=2)
    reference, _ = losses_on_mesh(config, (1, 1, 1), steps=3)
    losses, _ = losses_on_mesh(tiny_config("llama", n_kv_heads=2), (2, 2, 2), steps=3)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_state_is_created_sharded():
    """fsdp shards each weight's embed axis: a device holds 1/8 of it, nothing is replicated."""
    config = tiny_config("llama")
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
    engine = engine_lib.build(config, mesh_lib.make_mesh(config))
    state = engine.init_state()
    up = state.params["layers"]["mlp"]["up"]["kernel"]  # [layers, embed, mlp]
    assert up.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (2, 32 // 8, up.shape[2])
    mu = state.opt_state[1][0].mu["layers"]["mlp"]["up"]["kernel"]  # Adam moment, same sharding
    assert mu.sharding == up.sharding


# ------------------------------------------------------------------- mixture of experts

MOE_MESHES = [(1, 1, 8, 1), (2, 1, 4, 1), (1, 2, 4, 1), (2, 2, 2, 1), (1, 4, 2, 1),
              (1, 2, 2, 2)]  # (data, fsdp, expert, tensor)


def moe_config(**moe):
    config = tiny_config("llama", n_kv_heads=4)
    config.model.moe.update(dict(num_experts=8, top_k=2, router_z_loss=1e-2,
                                 load_balance_loss=1e-1, **moe))
    return config


@pytest.mark.slow
def test_moe_losses_equal_across_expert_meshes():
    """Dropless routing: the same losses, gradient norms and aux losses on one device and
    with the experts split 8, 4, 2 ways (the shard_map all-gather / reduce-scatter path),
    alone and with data, fsdp and tensor parallelism."""
    reference, _ = losses_on_mesh(moe_config(), (1, 1, 1, 1), steps=3)
    assert reference[-1, 0] < reference[0, 0]
    for shape in MOE_MESHES:
        losses, state = losses_on_mesh(moe_config(), shape, steps=3)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f"mesh {shape}")
    up = state.params["layers"]["mlp"]["experts"]["up"]  # [layers, experts, embed, mlp]
    assert up.sharding.spec == jax.sharding.PartitionSpec(None, "expert", "fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (2, 4, 16, up.shape[3] // 2)


@pytest.mark.slow
def test_moe_with_interval_shared_experts_and_xla_dispatch_equal_across_meshes():
    config = moe_config(interval=2, num_shared_experts=1)
    config.model.n_layers = 4
    reference, _ = losses_on_mesh(config, (1, 1, 1, 1), steps=2)
    for dispatch, shape in (("shard_map", (2, 1, 4, 1)), ("xla", (2, 1, 4, 1))):
        config = moe_config(interval=2, num_shared_experts=1, dispatch=dispatch)
        config.model.n_layers = 4
        losses, _ = losses_on_mesh(config, shape, steps=2)
        np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=f"{dispatch} {shape}")


def test_moe_row_capacity_drops_the_same_assignments_on_any_mesh():
    """HF Switch's per-row capacity is decided on the global routing: the same losses and
    dropped counts with the experts and the batch split."""
    def run(shape):
        config = moe_config(row_capacity=2)
        losses, _ = losses_on_mesh(config, shape, steps=2)
        return losses

    reference = run((1, 1, 1, 1))
    np.testing.assert_allclose(run((2, 1, 4, 1)), reference, rtol=1e-5)
    assert not np.allclose(reference, losses_on_mesh(moe_config(), (1, 1, 1, 1), steps=2)[0])


def test_moe_state_is_created_with_experts_split_over_the_expert_axis():
    config = moe_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.expert, config.mesh.tensor = 1, 2, 4, 1
    engine = engine_lib.build(config, mesh_lib.make_mesh(config))
    state = engine.init_state()
    down = state.params["layers"]["mlp"]["experts"]["down"]  # [layers, experts, mlp, embed]
    assert down.sharding.spec == jax.sharding.PartitionSpec(None, "expert", "tensor", "fsdp")
    assert down.addressable_shards[0].data.shape == (2, 8 // 4, down.shape[2], 32 // 2)
    assert engine.batch_sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp", "expert"))
