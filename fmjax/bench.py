"""python -m fmjax.bench --config=configs/NAME.py [overrides]: times full train steps on random
tokens after warm-up and prints compile time, median step time, tokens/s, MFU and peak host
memory. The last line is JSON.

On CPU the MFU denominator is the best fp32 matmul throughput of the host (peak_flops.CpuMatmulPeak),
sampled between the timed steps so that both see the same machine load; the best sample is
kept, so a noisy machine can only lower the reported MFU."""
import json
import resource
import time

import jax
import numpy as np
from absl import flags

from fmjax.nn import attention
from fmjax import cli
from fmjax.training import cpu_malloc, profile_report

FLAGS = flags.FLAGS
cli.define_config_flag()
flags.DEFINE_integer("profile_steps", 0, "after the timed steps, profile this many more and print "
                     "where their wall time goes (XLA:CPU; fmjax/training/profile_report.py)")


def mesh_devices(config):
    from fmjax.config import MESH_AXIS_NAMES
    sizes = [config.mesh[a] for a in MESH_AXIS_NAMES]
    if -1 in sizes:
        return jax.devices()
    return jax.devices()[:int(np.prod(sizes))]


def run_bench(config, profile_steps: int = 0) -> dict:
    from fmjax import config as config_lib, mesh as mesh_lib
    from fmjax.training import engine as engine_lib, peak_flops
    devices = mesh_devices(config)
    config_lib.validate(config, num_devices=len(devices))
    mesh = mesh_lib.make_mesh(config, devices)
    engine = engine_lib.build(config, mesh)
    cfg = engine.model_config
    b, t = config.train.global_batch_size, cfg.seq_len
    rng = np.random.default_rng(config.seed)
    batch = {"tokens": rng.integers(0, cfg.vocab_size, (b, t), dtype=np.int32),
             "segment_ids": np.ones((b, t), np.int32),
             "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()}
    batch = {k: jax.device_put(v, engine.batch_sharding) for k, v in batch.items()}
    state = engine.init_state()

    t0 = time.perf_counter()
    with mesh_lib.activate(mesh):
        compiled = engine.train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(config.bench.warmup_steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    cpu_probe = peak_flops.CpuMatmulPeak() if devices[0].platform == "cpu" else None
    times = []
    for _ in range(config.bench.steps):
        if cpu_probe is not None:
            cpu_probe.sample()
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    profile = None
    if profile_steps > 0:
        if devices[0].platform != "cpu":
            cli.fail(f"--profile_steps reads XLA:CPU's trace; on {devices[0].platform} use "
                     "jax.profiler with TensorBoard")
        state, profile = profile_report.profile_step(compiled, state, batch, profile_steps)

    n = engine.num_params()
    fpt = engine.flops_per_token()
    peak, peak_desc = peak_flops.total_peak(devices, cpu_probe)
    tps = b * t / step_s
    return {"config": {"family": cfg.family, "layers": cfg.n_layers, "d_model": cfg.d_model,
                       "heads": cfg.n_heads, "seq_len": t, "vocab": cfg.vocab_size, "batch": b,
                       "dtype": cfg.dtype, "scan_layers": cfg.scan_layers,
                       "remat": cfg.remat_policy,
                       "attention": attention.describe_implementation(
                           cfg.attention_impl, devices[0].platform, mesh.shape.get("context", 1)),
                       "mesh": dict(mesh.shape),
                       "devices": f"{len(devices)} x {devices[0].device_kind}",
                       "warmup_steps": config.bench.warmup_steps,
                       "timed_steps": config.bench.steps},
            "params": n, "compile_s": compile_s, "step_s_median": step_s,
            "step_s_min": float(np.min(times)), "step_s_max": float(np.max(times)),
            "tokens_per_sec": tps, "model_tflops_per_step": fpt * b * t / 1e12,
            "achieved_gflops": fpt * tps / 1e9, "peak_gflops": peak / 1e9, "peak": peak_desc,
            "mfu": fpt * tps / peak, "mfu_convention": "6N + 12LdT FLOPs per token",
            "cpu_peak_samples_gflops": [p / 1e9 for p in cpu_probe.samples] if cpu_probe else [],
            "peak_host_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            **({"profile": profile} if profile else {})}


def main(argv):
    cli.no_extra_args(argv)
    cpu_malloc.configure()
    r = run_bench(cli.load_config(), FLAGS.profile_steps)
    c = r["config"]
    print("settings: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    print(f"params {r['params']:,}; compile {r['compile_s']:.1f} s; step median "
          f"{1e3 * r['step_s_median']:.1f} ms (min {1e3 * r['step_s_min']:.1f}, max "
          f"{1e3 * r['step_s_max']:.1f}) over {c['timed_steps']} steps")
    print(f"tokens/s {r['tokens_per_sec']:,.0f}; model {r['achieved_gflops']:.1f} GFLOP/s; "
          f"peak {r['peak']}; MFU {100 * r['mfu']:.1f}% ({r['mfu_convention']}); "
          f"peak host memory {r['peak_host_memory_mb']:,.0f} MB")
    if "profile" in r:
        print(profile_report.format_report(r["profile"]))
    print(json.dumps(r))


if __name__ == "__main__":
    cli.run(main)
