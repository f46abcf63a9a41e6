"""fmjax.distributed without a cluster: how flags and environment decide the initialisation,
the startup failure and wrong-device messages, the agreement digests; and one real startup
timeout (a process whose peer never comes) in a subprocess."""
import os
import subprocess
import sys

import numpy as np
import pytest

from fmjax import distributed
from fmjax.config import base_config
from fmjax.distributed import DistributedError, Spec, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_plain_laptop_run_initialises_nothing():
    assert resolve(environ={}) is None
    assert resolve(environ={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None  # one task
    assert resolve(environ={"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # single-host TPU


@pytest.mark.parametrize("environ,expected", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM job 7 with 4 tasks"),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI job of 2 processes"),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, "multi-host TPU slice (4 workers)"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1"}, "multi-slice TPU"),
])
def test_clusters_jax_detects_are_initialised_automatically(environ, expected):
    spec = resolve(environ=environ)
    assert spec is not None and not spec.explicit and expected in spec.reason
    assert resolve(environ=environ, mode="off") is None


def test_explicit_from_environment_and_flags_win():
    env = {"FMJAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "FMJAX_NUM_PROCESSES": "4",
           "FMJAX_PROCESS_ID": "2"}
    assert resolve(environ=env) == Spec("10.0.0.1:1234", 4, 2, reason=resolve(environ=env).reason)
    spec = resolve(coordinator_address="h:9", num_processes=8, process_id=0, environ=env)
    assert (spec.coordinator_address, spec.num_processes, spec.process_id) == ("h:9", 8, 0)
    spec = resolve(process_id=3, environ=env)  # one flag overrides one variable
    assert (spec.coordinator_address, spec.num_processes, spec.process_id) == (
        "10.0.0.1:1234", 4, 3)
    assert resolve(coordinator_address="h:9", num_processes=1, process_id=0, environ={}) is None
    assert resolve(mode="on", environ={}).explicit is False


@pytest.mark.parametrize("kwargs,environ,match", [
    (dict(coordinator_address="h:1"), {}, r"needs --num_processes and --process_id"),
    (dict(coordinator_address="h:1", num_processes=2), {}, r"needs --process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), {}, r"0\.\.1"),
    (dict(num_processes=2, process_id=0), {}, r"without --coordinator_address"),
    ({}, {"FMJAX_COORDINATOR_ADDRESS": "h:1", "FMJAX_NUM_PROCESSES": "two",
          "FMJAX_PROCESS_ID": "0"}, r"FMJAX_NUM_PROCESSES = 'two': not an integer"),
])
def test_incomplete_or_wrong_settings_name_the_fix(kwargs, environ, match):
    with pytest.raises(DistributedError, match=match):
        resolve(environ=environ, **kwargs)


def test_failure_message_names_coordinator_and_missing_processes():
    spec = Spec("10.0.0.1:1234", 4, 0, reason="explicit coordinator 10.0.0.1:1234")
    error = RuntimeError("DEADLINE_EXCEEDED: Barrier timed out. Tasks not yet at the barrier: "
                         "/job:jax_worker/replica:0/task:1, /job:jax_worker/replica:0/task:3")
    text = distributed.failure_message(spec, 60, error)
    assert "coordinator 10.0.0.1:1234" in text and "timeout 60 s" in text
    assert "process(es) 1, 3 did not join" in text
    text = distributed.failure_message(spec, 60)  # the watchdog: JAX named nobody
    assert "not all of the 4 expected processes joined" in text
    text = distributed.failure_message(Spec("h:1", 4, 2), 60)
    assert "process 2 of 4 could not complete startup" in text


class FakeDevice:
    def __init__(self, platform):
        self.platform = platform


def test_expected_accelerator_missing_stops_with_a_clear_error():
    cpu = [FakeDevice("cpu")] * 8
    distributed.check_devices(None, cpu)
    for expected in ("gpu", "tpu", "any"):
        with pytest.raises(DistributedError, match=rf"expected {expected} devices .* only cpu"):
            distributed.check_devices(expected, cpu)
    distributed.check_devices("gpu", [FakeDevice("gpu")])
    distributed.check_devices("any", [FakeDevice("tpu")])
    with pytest.raises(DistributedError, match="use one of gpu, tpu, any"):
        distributed._expected("cuda ")


def test_disagreements_name_the_item_and_the_processes():
    names = ["config", "tokenizer", "data split"]
    same = np.stack([np.frombuffer(distributed.digest(n), np.uint8) for n in names])
    gathered = np.stack([same, same, same])
    assert distributed.disagreements(gathered, names) == []
    gathered[2, 1] = np.frombuffer(distributed.digest("stale tokenizer"), np.uint8)
    gathered[1, 0] = gathered[2, 0] = 0
    assert distributed.disagreements(gathered, names) == [
        "config (processes 1, 2)", "tokenizer (process 2)"]
    distributed.check_agreement({"config": "x"})  # one process: nothing to compare


def test_data_identity_changes_with_the_documents():
    class Cfg:
        class data:
            source = "mine"

    def source_of(texts):
        return lambda config, split: [{"text": t} for t in texts[split]]

    from fmjax.data.identity import data_identity
    a = data_identity(Cfg, source_of({"train": ["a", "b", "c"], "validation": ["v"]}))
    b = data_identity(Cfg, source_of({"train": ["a", "B", "c"], "validation": ["v"]}))
    assert a != b and "train: 3 documents" in a and "validation: 1 documents" in a
    assert a == data_identity(
        Cfg, source_of({"train": ["a", "b", "c"], "validation": ["v"]}))


@pytest.mark.slow
def test_a_process_whose_peer_never_joins_fails_after_the_timeout(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", FMJAX_COORDINATOR_ADDRESS="127.0.0.1:0",
               FMJAX_NUM_PROCESSES="2", FMJAX_PROCESS_ID="1")
    env.pop("XLA_FLAGS", None)
    code = ("from fmjax import distributed; "
            "distributed.initialize(distributed.Options(timeout=3))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert ("error: jax.distributed startup failed (explicit coordinator 127.0.0.1:0): "
            "coordinator 127.0.0.1:0, timeout 3 s") in result.stderr
    assert "process 1 of 2 could not complete startup" in result.stderr


def test_stage_starts_after_the_cpu_peak_is_measured(monkeypatch, capsys):
    """The MFU peak is sampled before the stage builds its data pipeline (whose threads would
    share the cores and halve it), and the loop's total_peak reuses that measurement."""
    from fmjax import cli
    from fmjax.training import peak_flops as flops
    monkeypatch.setattr(flops, "_HOST_PROBE", None)
    monkeypatch.setattr(distributed, "initialize", lambda options: None)
    monkeypatch.setattr(cli, "distributed_options", lambda: None)
    monkeypatch.setattr(cli, "load_config", base_config)
    seen = {}

    class Report:
        def text(self):
            return "report"

    def stage(config, workdir):
        seen["probe"] = flops._HOST_PROBE
        return Report()
    cli.run_stage(stage, "unused")
    assert seen["probe"] is not None and len(seen["probe"].samples) == 7
    assert flops.total_peak()[0] == seen["probe"].best  # no second measurement
    assert capsys.readouterr().out.strip() == "report"
