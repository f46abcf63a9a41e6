"""The metrics writer: metrics.jsonl and TensorBoard event files, without loading torch."""
import importlib.util
import json
import os
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = """
import os, sys
from fmjax.training import metrics_log as metrics
writer = metrics.MetricsWriter(sys.argv[1], total_steps=2)
writer.write(1, {"loss": 2.5, "learning_rate": 1e-3})
writer.close()
print("torch loaded:", "torch" in sys.modules)
import torch  # still importable afterwards
"""


def test_writes_jsonl_and_events_without_loading_torch(tmp_path):
    # tensorboardX imports torch whenever it is installed (1.7 s of every CLI start); the test
    # extra installs it, so this would fail without the writer hiding it
    assert importlib.util.find_spec("torch") is not None
    result = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stdout
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 1, "loss": 2.5, "learning_rate": 1e-3}]
    events = os.listdir(tmp_path / "tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    scalars = {(e.step, v.tag): v.simple_value
               for e in read_events(tmp_path / "tensorboard" / events[0]) for v in e.summary.value}
    assert scalars == {(1, "loss"): 2.5, (1, "learning_rate"): pytest.approx(1e-3)}


def read_events(path):
    """The Event records of a TensorBoard event file (TFRecord framing: length, its CRC, data,
    its CRC)."""
    from tensorboardX.proto.event_pb2 import Event
    data, records, at = open(path, "rb").read(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        records.append(Event.FromString(data[at + 12:at + 12 + length]))
        at += 12 + length + 4
    return records
