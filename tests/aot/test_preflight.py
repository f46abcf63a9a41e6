"""Pre-flight (fmjax/aot/compile.py, fmjax/preflight.py, fmjax/aot/tpu_slices.py): the real train step
compiled for TPU slices this host does not have (libtpu's compile-only devices), or for its own
CPU devices, with the verdict a launch relies on.

Needs libtpu (the `test` extra installs the release jax wants): without it these tests FAIL.
Compiles use `fast=True` (XLA's lowest execution-time effort, up to 3x quicker on 2 cores)
except where the CLI's default is the point; on the paper configs measured its peak is within
0.3% of the default compile's (README, "Pre-flight: will it fit?").
"""
import ast
import functools
import importlib.metadata
import io
import json
import math
import os
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from fmjax.aot import compile as aot, fit_report, targets, tpu_slices
from fmjax.training import engine as engine_lib
from fmjax import info
from fmjax import config as config_lib
from fmjax.config import sibling_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs")
GIB = 2 ** 30


pytestmark = pytest.mark.slow  # compiles real train steps for TPU topologies


def tiny_config(**overrides):
    """A GPT-2 family model small enough to compile in about a second."""
    c = config_lib.base_config()
    c.model.vocab_size, c.model.seq_len, c.model.d_model = 512, 128, 128
    c.model.n_layers, c.model.n_heads, c.model.dtype = 2, 4, "bfloat16"
    c.train.global_batch_size = 8
    return config_lib.apply_overrides(c, overrides)


def run_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the CLI makes its own CPU devices (cpu:N)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it reports what a fresh compile measures
    proc = subprocess.run([sys.executable, "-m", "fmjax.preflight", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------ slice names

@pytest.mark.parametrize("name, topology, chips, hosts, devices", [
    ("v5p-8", "v5p:2x2x1", 4, 1, 4),
    ("v5p-32", "v5p:2x2x4", 16, 4, 16),
    ("v5p-128", "v5p:4x4x4", 64, 16, 64),
    ("v5p-256", "v5p:4x4x8", 128, 32, 128),
    ("v5p-1536", "v5p:8x8x12", 768, 192, 768),
    ("v5p-12288", "v5p:16x16x24", 6144, 1536, 6144),
    ("v5litepod-4", "v5e:2x2", 4, 1, 4),
    ("v5litepod-256", "v5e:16x16", 256, 32, 256),
    ("v6e-8", "v6e:2x4", 8, 1, 8),
    ("v6e-64", "v6e:8x8", 64, 8, 64),
    ("v4-8", "v4:2x2x1", 4, 1, 4),
    ("v4-32", "v4:2x2x4", 16, 4, 16),
    ("tpu7x-8", "tpu7x:2x2x1", 4, 1, 8),
    ("tpu7x-128", "tpu7x:4x4x4", 64, 16, 128),
])
def test_slice_names_translate_to_topologies(name, topology, chips, hosts, devices):
    s = tpu_slices.parse(name)
    assert (s.topology_name, s.chips, s.hosts, s.devices) == (topology, chips, hosts, devices)
    assert s.name == name and tpu_slices.parse(topology) == s  # both forms, one slice


def test_other_spellings_of_a_slice():
    assert tpu_slices.parse("v5e-16") == tpu_slices.parse("v5litepod-16")
    assert tpu_slices.parse("v5:2x4x4").name == "v5p-64"  # libtpu's own v5p prefix
    assert tpu_slices.parse("v4-8").topology_kwargs == {"chip_config_name": "megacore"}


@pytest.mark.parametrize("name, expected", [
    ("v5p_32", "Did you mean 'v5p-32'?"),  # libtpu's regex refuses both v5p-32 and this
    ("v5p 128", "Did you mean 'v5p-128'?"),
    ("v5p-24", "the smallest is v5p-8 (2x2x1)"),
    ("v5p-7", "count TensorCores, 2 per chip"),
    ("v5e-2", "v5litepod-1, v5litepod-4, v5litepod-8"),
    ("v9-8", "known: v4, v5p, v5e, v6e, tpu7x"),
    ("v5p:4x4", "v5p topologies have 3 dimensions"),
])
def test_refused_names_say_what_is_accepted(name, expected):
    with pytest.raises(tpu_slices.SliceError, match=re.escape(expected)):
        tpu_slices.parse(name)


def test_libtpu_refusal_is_translated():
    with pytest.raises(targets.PreflightError) as e:
        targets.resolve_target("v5p:3x3x3")  # a well-formed name no slice has
    assert "libtpu refused --topology=v5p:3x3x3" in str(e.value)
    assert "v5p-128" in str(e.value) and "v5p:4x4x4" in str(e.value)


# --------------------------------------------------------------------------- libtpu

def test_libtpu_is_installed_and_is_the_release_jax_wants():
    version = targets.check_libtpu()  # fails (does not skip) when the test extra is missing
    wanted = targets._jax_libtpu_requirement()
    assert wanted and targets._version_matches(version, wanted), (version, wanted)


def test_libtpu_version_mismatch_names_both_versions_and_the_fix(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.0.1" if name == "libtpu" else real(name))
    with pytest.raises(targets.PreflightError) as e:
        targets.resolve_target("v5p-8")
    msg = str(e.value)
    assert "libtpu 0.0.1" in msg and f"jax {jax.__version__}" in msg
    assert f"pip install 'jax[tpu]=={jax.__version__}'" in msg


def test_missing_libtpu_says_how_to_install_it(monkeypatch):
    def version(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    with pytest.raises(targets.PreflightError, match=r"needs libtpu, which is not installed.*"
                                                 r"pip install"):
        targets.check_libtpu()


# ------------------------------------------------------------------------ targets

@pytest.mark.parametrize("topology, devices, kind, hbm_gib", [
    ("v5e:2x2", 4, "TPU v5 lite", 15.75),
    ("v5e:16x16", 256, "TPU v5 lite", 15.75),
    ("v6e:4x4", 16, "TPU v6 lite", 31.25),
    ("v5p:2x2x4", 16, "TPU v5", 95.74),
    ("v5:2x4x4", 32, "TPU v5", 95.74),
    ("v5p-128", 64, "TPU v5", 95.74),
    ("tpu7x:2x2x1", 8, "TPU7x", 94.75),
    ("v4-8", 4, "TPU v4", 30.75),
])
def test_listed_topologies_resolve_with_their_hbm(topology, devices, kind, hbm_gib):
    t = targets.resolve_target(topology)
    assert (len(t.devices), t.devices[0].device_kind, t.platform) == (devices, kind, "tpu")
    # read from libtpu itself (a compile that overflows); the fallback table agrees
    assert t.memory_source.endswith("libtpu allows one program"), t.memory_source
    assert t.memory_bytes == int(hbm_gib * GIB) == int(targets.HBM_GIB[kind] * GIB)


def test_cpu_target_budget_is_host_ram():
    t = targets.resolve_target("cpu:4")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert (len(t.devices), t.platform, t.memory_bytes) == (4, "cpu", ram // 4)
    assert len(targets.resolve_target("local").devices) == jax.device_count()
    with pytest.raises(targets.PreflightError, match="xla_force_host_platform_device_count=64"):
        targets.resolve_target("cpu:64")


# ------------------------------------------------------------- a tiny model, compiled

@pytest.fixture(scope="module")
def tiny_v5p():
    return aot.run(tiny_config(), "v5p-8", fast=True)


def test_tiny_model_fits_and_memory_adds_up(tiny_v5p):
    r, m = tiny_v5p, tiny_v5p.memory
    assert r.fits and r.compiled is not None
    assert r.mesh == {"data": 4, "fsdp": 1, "expert": 1, "context": 1, "tensor": 1}
    engine = engine_lib.build(r.config, aot.make_mesh(r.config, r.target))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(engine.abstract_state))
    params = info.summarize(r.config)["total_params"]
    assert r.state_bytes == total >= 3 * 4 * params  # replicated: f32 params, Adam mu and nu
    assert m.arguments >= r.state_bytes and 0 < m.required < m.available
    assert m.available == int(95.74 * GIB)
    summary = fit_report.summary(r)
    assert summary["fits"] and summary["knobs"] == [] and summary["params"] == r.num_params
    assert fit_report.report_lines(r)[-1].startswith("verdict   FITS: peak")
    # with fsdp=4 each device holds a quarter of every sharded array: the state shrinks ~4x
    sharded = tiny_config(**{"mesh.fsdp": 4, "mesh.data": 1})
    state, _ = aot.abstract_inputs(engine_lib.build(sharded, aot.make_mesh(sharded, r.target)))
    assert total / 4 < aot.sharded_bytes(state) < total / 3


def test_flops_per_step_are_fmjax_count(tiny_v5p):
    """6N + 12LdT per token over the step's tokens (fmjax/training/peak_flops.py), not cost_analysis()."""
    c = tiny_v5p.config.model
    n = info.summarize(tiny_v5p.config)["params"] - c.seq_len * c.d_model  # minus positions
    per_token = 6 * n + 12 * c.n_layers * c.d_model * c.seq_len
    assert tiny_v5p.model_flops_per_step == per_token * 8 * c.seq_len
    assert tiny_v5p.ideal_step_s == tiny_v5p.model_flops_per_step / (4 * 459e12)
    assert math.isclose(tiny_v5p.mfu(2 * tiny_v5p.ideal_step_s), 0.5)


def test_splash_attention_compiles_to_the_tpu_kernel_and_saves_the_scores(tiny_v5p):
    """attention_impl=splash for a TPU target is the Mosaic kernel (a tpu_custom_call), not
    Pallas' interpret mode, and drops the [B, H, T, S] scores XLA's attention keeps: at 1,024
    positions the step needs less memory than with XLA attention."""
    long = {"model.seq_len": 1024, "train.global_batch_size": 16}
    xla = aot.compile_train_step(tiny_config(**long), tiny_v5p.target, fast=True)
    splash = aot.compile_train_step(tiny_config(**long, **{"model.attention_impl": "splash"}),
                                    tiny_v5p.target, fast=True)
    assert "tpu_custom_call" in splash.compiled.as_text()
    assert "tpu_custom_call" not in xla.compiled.as_text()
    assert splash.memory.temporaries < 0.7 * xla.memory.temporaries


def test_moe_grouped_matmul_compiles_to_megablox_for_tpu(tiny_v5p):
    """model.moe.grouped_matmul auto for a TPU target is megablox's Mosaic kernels (gmm
    forward and dx, tgmm dw, for the experts' three matrices), inside the dispatch's
    shard_map over the expert axis; ragged_dot is XLA's own lowering (its ragged-dot
    kernels), without them."""
    def kernels_of(impl):
        config = tiny_config(**{"model.family": "llama", "model.moe.num_experts": 4,
                                "model.moe.grouped_matmul": impl, "mesh.expert": 4,
                                "mesh.data": 1})
        text = aot.compile_train_step(config, tiny_v5p.target, fast=True).compiled.as_text()
        calls = [line.split("=")[0].strip() for line in text.splitlines()
                 if 'custom_call_target="tpu_custom_call"' in line]
        return sorted({re.sub(r"[.\d]+$", "", name.lstrip("%")) for name in calls}), len(calls)

    assert kernels_of("auto") == (["gmm", "tgmm"], 9)
    assert "gmm" not in kernels_of("ragged_dot")[0]


def test_memory_grows_with_batch(tiny_v5p):
    big = aot.compile_train_step(tiny_config(**{"train.global_batch_size": 256}),
                                 tiny_v5p.target, fast=True)
    assert big.state_bytes == tiny_v5p.state_bytes
    assert big.memory.temporaries > 8 * tiny_v5p.memory.temporaries  # 32x the rows
    assert big.memory.required > 4 * tiny_v5p.memory.required


def test_saved_tpu_executable_reads_back(tiny_v5p, tmp_path):
    path = str(tmp_path / "step.aot")
    assert aot.save_compiled(tiny_v5p, path) > 10_000
    record = aot.read_compiled(path)
    assert (record["platform"], record["devices"], record["jax"]) == ("tpu", 4, jax.__version__)
    assert config_lib.from_json(record["config"]).model.d_model == 128

    devices = {d.id: d for d in tiny_v5p.target.devices}

    class Payload(pickle.Unpickler):  # deserialize_and_load's unpickler, minus the TPU client
        def persistent_load(self, pid):
            return devices[pid[1]] if pid[0] == "device" else pid
    executable, args_info, _ = Payload(io.BytesIO(record["executable"])).load()
    kind, program = executable.xla_executable  # the TPU program, for the TPU client to load
    assert kind == "exec" and len(program) > 10_000
    assert len(executable.device_list) == 4 and executable.name == "jit(train_step)"
    assert len(args_info) == len(jax.tree.leaves(tiny_v5p.compiled.args_info))


def test_saved_cpu_executable_loads_and_trains(tmp_path):
    path = str(tmp_path / "cpu.aot")
    result = aot.run(tiny_config(**{"train.global_batch_size": 4}), "cpu:2", save_path=path)
    assert result.fits and result.target.platform == "cpu"
    m = result.memory  # XLA:CPU allocates its whole temp buffer (its "peak" leaves it out)
    assert m.required == m.arguments + m.outputs - m.aliased + m.temporaries
    step = aot.load_compiled(path, devices=result.target.devices)
    engine = engine_lib.build(result.config, aot.make_mesh(result.config, result.target))
    state = engine.init_state()
    rows = np.tile(np.arange(128, dtype=np.int32) % 500, (4, 1))
    batch = {k: jax.device_put(v, engine.batch_sharding)
             for k, v in {"tokens": rows, "segment_ids": np.ones_like(rows),
                          "positions": np.tile(np.arange(128, dtype=np.int32), (4, 1))}.items()}
    state, metrics = step(state, batch)
    assert int(state.step) == 1
    assert abs(float(metrics["loss"]) - math.log(512)) < 0.5  # an untrained model's loss


# ----------------------------------------------------------------------- the CLI

def test_overflow_exits_nonzero_and_names_the_knobs():
    proc, summary = run_cli("--config=configs/default.py", "--topology=v5litepod-4", "--fast",
                            "--config.model.seq_len=1024", "--config.train.global_batch_size=1024")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "DOES NOT FIT" in proc.stdout
    assert summary["fits"] is False and summary["over_gib"] > 0
    assert summary["memory_gib"]["available"] == 15.75
    knobs = " ".join(summary["knobs"])
    for knob in ("--config.model.remat_policy=full", "a larger slice (v5litepod-8)"):
        assert knob in knobs and knob in proc.stdout
    # enough microbatches (or a batch that much smaller) to bring the peak under 85% of HBM
    k = int(re.search(r"--config\.train\.microbatches=(\d+)", knobs).group(1))
    assert k >= 2 and f"--config.train.global_batch_size={1024 // k}:" in knobs
    assert summary["memory_gib"]["required"] / k < 0.85 * 15.75 < summary["memory_gib"][
        "required"] / (k / 2)


def test_launcher_interface_default_compile_multislice_and_save(tmp_path):
    """launch/tpu_vm.sh: --config, --topology=SLICE, --num_slices, --config.* overrides; exit 0
    means it fits. Here at the default compile effort, with the executable saved."""
    path = str(tmp_path / "step.aot")
    proc, summary = run_cli("--config=configs/default.py", "--topology=v5p-8", "--num_slices=2",
                            "--config.model.n_layers=2", f"--save_compiled={path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary["fits"] is True and summary["num_slices"] == 2
    assert summary["topology_devices"] == 8 and summary["mesh"]["data"] == 8
    assert aot.read_compiled(path)["devices"] == 8


def test_train_mesh_on_two_slices_crosses_them_only_along_data():
    """fmjax.train's mesh (mesh.make_mesh) on multislice devices (libtpu's compile-only
    2 x v5p-8): the slices stack along mesh.data; fsdp and tensor stay inside a slice."""
    from fmjax import mesh as mesh_lib
    target = targets.resolve_target("v5p-8", num_slices=2)
    mesh = mesh_lib.make_mesh(tiny_config(**{"mesh.data": 2, "mesh.fsdp": -1}), target.devices,
                              target.processes)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "expert": 1, "context": 1, "tensor": 1}
    slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)  # [data, fsdp, 1, 1, 1]
    np.testing.assert_array_equal(slice_of[:, :, 0, 0, 0], [[0] * 4, [1] * 4])
    # with data 1, fsdp spans the slices instead; neither a multiple of 2: refused with the fix
    mesh = mesh_lib.make_mesh(tiny_config(**{"mesh.data": 1, "mesh.fsdp": -1}), target.devices,
                              target.processes)
    assert sorted(set(np.vectorize(lambda d: d.slice_index)(mesh.devices)[0, :4, 0, 0, 0])) == [0]
    with pytest.raises(config_lib.ConfigError, match=r"span 2 TPU slices.*--config.mesh.data=2"):
        mesh_lib.make_mesh(tiny_config(**{"mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": -1,
                                          "model.n_heads": 8}), target.devices, target.processes)


def test_refused_topology_exits_2_with_the_accepted_form():
    proc, summary = run_cli("--config=configs/default.py", "--topology=v5p_32")
    assert proc.returncode == 2 and summary["fits"] is None
    assert "Did you mean 'v5p-32'?" in proc.stderr and "Did you mean" in summary["error"]


def test_cpu_topology_through_the_cli():
    proc, summary = run_cli("--config=configs/default.py", "--topology=cpu:2", "--fast",
                            "--config.model.n_layers=1", "--config.train.global_batch_size=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert summary["topology_devices"] == 2 and "host RAM" in summary["memory_source"]


# ----------------------------------------------------------------- paper configs

PAPER = ("gpt2_small", "gpt2_medium", "gpt2_large", "gpt2_xl", "bert_base", "bert_large",
         "t5_small", "t5_base", "t5_large", "t5_1_1_small", "t5_1_1_base", "t5_1_1_large",
         "llama2_7b", "llama3_8b", "llama3_8b_32k", "mixtral_8x7b", "switch_base_8")
# Compiled here in every run: one per model structure that compiles in seconds on 2 cores.
# The T5 family's train step (encoder + decoder + span corruption) takes 50-130 s each to
# compile here, the larger GPT-2s and BERT 15-40 s, Mixtral 8x7B 120 s: FMJAX_PREFLIGHT_ALL=1
# compiles all 17 (about 20 minutes; docs/preflight.md lists the measured peaks).
EVERY_RUN = ("gpt2_small", "bert_base", "llama2_7b")


def header(name):
    with open(os.path.join(CONFIGS, name + ".py")) as f:
        return ast.get_docstring(ast.parse(f.read()))


def launch_overrides(name):
    """The --config.* overrides of the header's launch command (its first command, up to the
    line that does not continue with a backslash)."""
    lines = []
    for line in header(name).split("Command:")[1].strip().splitlines():
        lines.append(line)
        if not line.rstrip().endswith("\\"):
            break
    return dict(re.findall(r"--config\.([\w.]+)=(\S+)", " ".join(lines)))


def launch_config(name):
    c = sibling_config(os.path.join(CONFIGS, "x.py"), name)
    for key, text in launch_overrides(name).items():
        old = config_lib.get(c, key)
        value = text in ("True", "true") if isinstance(old, bool) else type(old)(text)
        config_lib.apply_overrides(c, {key: value})
    return c


@functools.lru_cache(maxsize=None)
def slice_target(name):
    return targets.resolve_target(name)


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_declares_its_slice_in_config_and_header(name):
    c = launch_config(name)
    assert tpu_slices.parse(c.hardware.tpu_slice).name == c.hardware.tpu_slice
    assert f"Slice:    {c.hardware.tpu_slice}" in header(name)
    # the header's launch command lays out on the slice's chip grid (jax.make_mesh, as
    # fmjax.train does): e.g. --config.mesh.fsdp=8 cannot, on a v5p-128 (4x4x4)
    mesh = aot.make_mesh(c, slice_target(c.hardware.tpu_slice))
    assert mesh.devices.size == slice_target(c.hardware.tpu_slice).tpu_slice.devices


def test_a_mesh_the_slice_cannot_hold_is_refused_with_the_sizes_it_can():
    c = launch_config("bert_large")  # --config.mesh.fsdp=8
    with pytest.raises(targets.PreflightError, match=r"4x4x4 chip grid .*: 1, 4, 16, 64; .*"
                                                 r"launch would stop here too"):
        aot.make_mesh(c, slice_target("v5p-128"))


@pytest.mark.parametrize("name", [
    n if n in EVERY_RUN else pytest.param(n, marks=pytest.mark.skipif(
        not os.environ.get("FMJAX_PREFLIGHT_ALL"), reason="FMJAX_PREFLIGHT_ALL=1 compiles it"))
    for n in PAPER])
def test_paper_config_fits_its_slice(name):
    """The header's launch command, compiled at full size for the declared slice, fits.
    No scaling is needed: with scan_layers (every paper config) the compile takes about as long
    for 32 layers as for 2, so llama2_7b is compiled whole rather than extrapolated."""
    c = launch_config(name)
    result = aot.run(c, c.hardware.tpu_slice, fast=True)
    m = result.memory
    assert result.fits, (name, m.required / GIB, m.available / GIB)
    assert m.required <= 0.85 * m.available  # the rule the slices were chosen by
    assert result.num_params == info.summarize(c)["total_params"]
