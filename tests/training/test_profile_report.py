"""fmjax.training.profile_report: wall time split among concurrently running ops, gaps reported, ops
grouped by source name across layers; and `fmjax.bench --profile_steps` end to end."""
import importlib.util
import os

import pytest

from fmjax import bench
from fmjax.training import profile_report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_overlapping_ops_share_the_wall_time_and_gaps_are_idle():
    names = {"dot.1": "FWD layer_*/mlp/up/dot_general", "add.2": "add"}
    events = [(0, 10, "dot.1"), (5, 15, "add.2"), (20, 30, "dot.1")]
    shares = profile_report.wall_shares(events, names)
    # 0-5 dot alone, 5-10 both (half each), 10-15 add alone, 15-20 nothing, 20-30 dot
    assert shares == {"FWD layer_*/mlp/up/dot_general": 5 + 2.5 + 10, "add": 2.5 + 5,
                      profile_report.IDLE: 5}
    assert sum(shares.values()) == 30


@pytest.mark.parametrize("op_name, group", [
    ("jit(train_step)/jvp(Decoder)/layer_3/layer_3._sublayer/mlp/up/dot_general",
     "FWD layer_*/mlp/up/dot_general"),
    ("jit(train_step)/transpose(jvp(Decoder))/layer_0/layer_0._sublayer/attn/out/dot_general",
     "BWD layer_*/attn/out/dot_general"),
    ("jit(train_step)/add", "add"),
])
def test_groups_fold_layers_and_name_the_pass(op_name, group):
    hlo = f'  %fusion.7 = f32[8]{{0}} fusion(%p), metadata={{op_name="{op_name}"}}'
    assert profile_report.op_names(hlo) == {"fusion.7": group}


@pytest.mark.slow
def test_bench_profile_accounts_for_the_whole_step():
    spec = importlib.util.spec_from_file_location("bench_small",
                                                  os.path.join(ROOT, "configs/bench_small.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.n_layers, config.model.d_model, config.model.n_heads = 1, 64, 2
    config.model.seq_len, config.model.vocab_size = 128, 512
    config.bench.warmup_steps, config.bench.steps = 1, 2
    r = bench.run_bench(config, profile_steps=2)
    ops = r["profile"]["ops"]
    assert sum(share for _, _, share in ops) == pytest.approx(1.0)
    groups = [group for group, _, _ in ops]
    assert any(g.startswith("FWD layer_*/mlp/up/") for g in groups)  # named by module
    assert any(g.startswith("BWD ") for g in groups)
    assert r["profile"]["wall_ms_per_step"] > 0
    assert "where the wall time goes (2 profiled steps" in profile_report.format_report(r["profile"])
