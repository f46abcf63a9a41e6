"""Config validation: each bad value is refused before any compile, naming field and fix."""
import subprocess
import sys

import pytest

from fmjax import config as config_lib
from fmjax.config import ConfigError
from fmjax import models
from tests.helpers import tiny_config


def check(config, devices=8, processes=1):
    """The checks a stage runs before it compiles: the config schema's, then the model's own
    (its plug-ins: layers, attention)."""
    sizes = config_lib.validate(config, num_devices=devices, num_processes=processes)
    models.resolve(config.model)
    return sizes


def test_fill_axis_resolves_to_the_devices_left():
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 2, 2
    assert check(c) == {"data": 2, "fsdp": 2, "expert": 1, "context": 1, "tensor": 2}


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.mesh.update(data=2, fsdp=1, tensor=3),
     r"data\*fsdp\*expert\*context\*tensor = 6 but 8 devices are visible; set "
     r"--config.mesh.data=-1"),
    (lambda c: c.mesh.update(data=-1, fsdp=-1),
     r"config.mesh.fsdp = -1: only one mesh axis may be -1"),
    (lambda c: c.model.update(d_model=30, n_heads=8),
     r"config.model.n_heads = 8: does not divide model.d_model = 30"),
    (lambda c: c.model.update(n_heads=8, n_kv_heads=3),
     r"config.model.n_kv_heads = 3: does not divide model.n_heads = 8"),
    (lambda c: c.mesh.update(data=1, fsdp=1, tensor=8) or c.model.update(n_kv_heads=2),
     r"config.mesh.tensor = 8: does not divide model.n_kv_heads = 2"),
    (lambda c: c.train.update(global_batch_size=12),
     r"config.train.global_batch_size = 12: not divisible by mesh data\*fsdp\*expert \(8\).*"
     r"multiple of 8"),
    (lambda c: c.mesh.update(expert=4) or c.model.moe.update(num_experts=6),
     r"config.model.moe.num_experts = 6: not divisible by mesh.expert = 4 .*"
     r"--config.mesh.expert=1"),
    (lambda c: c.model.moe.update(num_experts=2, top_k=3),
     r"config.model.moe.top_k = 3: must be between 1 and model.moe.num_experts = 2; "
     r"set --config.model.moe.top_k=2"),
    (lambda c: c.model.moe.update(num_experts=4, interval=3),
     r"config.model.moe.interval = 3: does not divide model.n_layers = 2"),
    (lambda c: c.model.moe.update(num_experts=4, capacity_factor=-1.0),
     r"config.model.moe.capacity_factor = -1.0: must be >= 0"),
    (lambda c: c.model.moe.update(num_experts=4, capacity_factor=1.25, row_capacity=64),
     r"config.model.moe.row_capacity = 64: set together with model.moe.capacity_factor = 1.25 "
     r".*; set --config.model.moe.row_capacity=0 or --config.model.moe.capacity_factor=0"),
    (lambda c: c.model.moe.update(num_experts=4, grouped_matmul="gmm"),
     r"config.model.moe.grouped_matmul = 'gmm': unknown grouped matmul; use auto, ragged_dot "
     r"or megablox"),
    (lambda c: c.model.moe.update(num_experts=-1),
     r"config.model.moe.num_experts = -1: must be >= 0; set --config.model.moe.num_experts=0"),
    (lambda c: c.model.moe.update(num_experts=4, dispatch="alltoall"),
     r"config.model.moe.dispatch = 'alltoall': unknown dispatch; use shard_map or xla"),
    (lambda c: c.mesh.update(tensor=8) or c.model.update(n_heads=8, d_ff=36)
     or c.model.moe.update(num_experts=4),
     r"config.mesh.tensor = 8: does not divide the expert width 36"),
    (lambda c: c.mesh.update(context=4) or c.model.update(seq_len=36),
     r"config.model.seq_len = 36: not a multiple of 2 x mesh.context = 8 .*"
     r"--config.model.seq_len=40"),
    (lambda c: c.mesh.update(context=2) or c.model.update(attention_impl="splash"),
     r"config.model.attention_impl = 'splash': its kernel needs whole rows and mesh.context = "
     r"2 splits them; set --config.model.attention_impl=xla"),
    (lambda c: c.mesh.update(context=2) or c.model.update(dropout=0.1),
     r"config.model.dropout = 0.1: attention dropout is not implemented with mesh.context = 2"),
    (lambda c: c.model.update(remat_policy="everything"),
     r"config.model.remat_policy = 'everything': unknown policy; use one of none, full"),
    (lambda c: c.model.update(attention_impl="flash"),
     r"config.model.attention_impl = 'flash': unknown implementation; use one of auto"),
])
def test_bad_values_name_field_and_fix(edit, message):
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    edit(c)
    with pytest.raises(ConfigError, match=message):
        check(c)


def test_batch_must_split_over_processes():
    c = tiny_config()
    c.mesh.data = -1
    c.train.global_batch_size = 9
    with pytest.raises(ConfigError, match="global_batch_size = 9: not divisible by the 2 processes"):
        check(c, devices=1, processes=2)


def test_microbatches_must_divide_batch():
    c = tiny_config()
    c.mesh.data = -1
    c.train.global_batch_size, c.train.microbatches = 16, 4
    with pytest.raises(ConfigError, match=r"train.microbatches \(4\).*multiple of 32"):
        check(c)


def test_unknown_override_key_gets_did_you_mean():
    with pytest.raises(ConfigError, match="unknown config key 'train.step'. Did you mean 'train.steps'"):
        config_lib.apply_overrides(tiny_config(), {"train.step": 3})


def test_cli_rejects_unknown_key_before_doing_anything(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fmjax.train", "--config=configs/default.py",
         f"--workdir={tmp_path / 'run'}", "--config.optim.learning_rat=1e-3"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "unknown config key 'optim.learning_rat'" in result.stderr
    assert "Did you mean 'optim.learning_rate'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_json_round_trip_keeps_values():
    c = tiny_config("llama")
    c.optim.learning_rate = 0.5
    back = config_lib.from_json(config_lib.to_json(c))
    assert back.to_dict() == c.to_dict()
    assert config_lib.diff(c, back, config_lib.SHAPE_KEYS) == []
