"""The metrics writer: metrics.jsonl and TensorBoard event files, without loading torch."""
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import os, sys
from fmjax import metrics
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
    assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0
