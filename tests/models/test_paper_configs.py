"""Paper configs: every released architecture's parameter count, exactly, from
`python -m fmjax.info` (jax.eval_shape; nothing is allocated), and a header that says where the
numbers come from, how to launch the run and what to expect."""
import ast
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from fmjax import info
from fmjax.config import sibling_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")

PUBLISHED = {  # released checkpoints' counts (HF `num_parameters()`, tied tables once)
    "gpt2_small": 124_439_808,
    "gpt2_medium": 354_823_168,
    "gpt2_large": 774_030_080,
    "gpt2_xl": 1_557_611_200,
    "bert_base": 109_482_240,  # encoder + pooler, no MLM head
    "bert_large": 335_141_888,
    "t5_small": 60_506_624,
    "t5_base": 222_903_552,
    "t5_large": 737_668_096,
    "t5_1_1_small": 76_961_152,
    "t5_1_1_base": 247_577_856,
    "t5_1_1_large": 783_150_080,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "llama3_8b_32k": 8_030_261_248,  # the same model on 32K-token rows (context parallelism)
    "mixtral_8x7b": 46_702_792_704,  # recomputed from the release config.json (see header)
    "switch_base_8": 619_339_008,  # T5-Base + 12 sparse layers x (7 x 2 x 768 x 3072 + 768 x 8)
}
# mixtures of experts: parameters one token passes through (top-k of the routed experts)
ACTIVE = {
    "mixtral_8x7b": 12_879_925_248,  # 46,702,792,704 - 32 layers x 6 experts x 3 x 4096 x 14,336
    "switch_base_8": 222_977_280,  # 619,339,008 - 12 layers x 7 experts x 2 x 768 x 3072
}


def load(name):
    return sibling_config(os.path.join(CONFIGS, "x.py"), name)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_count(name):
    summary = info.summarize(load(name))
    assert summary["params"] == PUBLISHED[name]
    assert summary.get("active_params") == ACTIVE.get(name)  # dense models: no active count


def test_active_parameters_are_what_the_flop_count_uses():
    """MFU counts a mixture of experts' active parameters: 6 x active + attention per token."""
    from fmjax import models
    from fmjax.models import flops
    from fmjax.nn import moe
    from fmjax.training import state
    config = load("mixtral_8x7b")
    model, cfg = models.build(config)
    abstract, _ = state.abstract_params(model, cfg.seq_len)
    active = moe.active_params(state.count_params(abstract), abstract, cfg.moe)
    assert active == ACTIVE["mixtral_8x7b"]
    attention = 12 * 32 * 32 * 128 * 4096
    assert flops.flops_per_token(cfg, active, 0) == 6 * ACTIVE["mixtral_8x7b"] + attention
    # encoder-decoder rows: the Switch MLPs count one expert (+ the router) per token
    t5 = load("switch_base_8")
    _, t5_cfg = models.build(t5)
    dense = flops.mlp_weights(dataclasses.replace(t5_cfg, moe=moe.MoeConfig()), 2, 12)
    assert flops.mlp_weights(t5_cfg, 2, 12) == dense + 6 * 768 * 8  # routers only


def test_info_cli_reports_active_parameters_of_a_mixture():
    out = subprocess.run([sys.executable, "-m", "fmjax.info", "--config=configs/mixtral_8x7b.py"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    last = json.loads(out.strip().splitlines()[-1])
    assert (last["params"], last["active_params"]) == (PUBLISHED["mixtral_8x7b"],
                                                       ACTIVE["mixtral_8x7b"])
    assert "46,702,792,704" in out and "12,879,925,248" in out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_header_states_source_command_budget_expectation(name):
    with open(os.path.join(CONFIGS, name + ".py")) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    for field in ("Command:", "Budget:", "Expected:"):
        assert field in doc, f"configs/{name}.py header lacks '{field}'"
    assert "python -m fmjax.train --config=configs/" + name + ".py" in doc
    assert f"{PUBLISHED[name]:,}" in doc  # the count the test asserts is the one it promises


def test_info_cli_prints_the_count():
    out = subprocess.run([sys.executable, "-m", "fmjax.info", "--config=configs/llama3_8b.py"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["params"] == PUBLISHED["llama3_8b"]
    assert "8,030,261,248" in out


def test_cli_start_prints_no_tpu_probe_errors_on_a_host_without_tpu():
    """The test extra installs libtpu (pre-flight); without a TPU chip JAX would still probe
    for one and libtpu prints several lines of errors at every CLI start
    (cli.skip_absent_tpu keeps JAX on CPU there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    r = subprocess.run([sys.executable, "-m", "fmjax.info", "--config=configs/bench_small.py"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "TPU" not in r.stderr and "tpu" not in r.stderr, r.stderr


def test_padded_vocab_is_an_option_that_leaves_the_default_count_alone():
    config = load("gpt2_small")
    config.model.vocab_multiple = 128  # 50,257 -> 50,304 rows, for speed
    padded = info.summarize(config)["params"]
    assert padded == PUBLISHED["gpt2_small"] + (50304 - 50257) * 768
    assert info.summarize(load("gpt2_small"))["params"] == PUBLISHED["gpt2_small"]
