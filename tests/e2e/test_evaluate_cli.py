"""python -m fmjax.evaluate on the session's trained workdir: COPA from the shipped benchmark
data and a user's JSONL task, few-shot; the table and lm-evaluation-harness's results layout;
the same tasks in the training loop (config.eval.*) land in metrics.jsonl."""
import json

from tests.e2e.test_train_cli import TINY, cli


def test_evaluate_prints_the_table_and_writes_harness_results(full_run, tmp_path):
    workdir, _ = full_run
    task = tmp_path / "mine.jsonl"
    task.write_text("\n".join(json.dumps({"context": f"def f{i}(x):\n    return", "choices":
                                          ["x", "None", "1"], "gold": i % 3})
                              for i in range(12)))
    out = tmp_path / "results.json"
    text = cli("fmjax.evaluate", f"--workdir={workdir}", f"--tasks=copa,jsonl:{task}",
               "--num_fewshot=2", "--limit=10", f"--output={out}")
    assert "copa" in text and "acc_norm" in text
    results = json.loads(out.read_text())
    for name in ("copa", f"jsonl:{task}"):
        row = results["results"][name]
        assert 0.0 <= row["acc,none"] <= 1.0 and 0.0 <= row["acc_norm,none"] <= 1.0
        assert row["acc_stderr,none"] > 0 or row["acc,none"] in (0.0, 1.0)
        assert results["n-samples"][name]["effective"] == 10
        assert results["n-shot"][name] == 2
    again = tmp_path / "again.json"
    cli("fmjax.evaluate", f"--workdir={workdir}", f"--tasks=copa,jsonl:{task}",
        "--num_fewshot=2", "--limit=10", f"--output={again}")
    assert json.loads(again.read_text())["results"] == results["results"]  # deterministic


def test_eval_tasks_run_in_the_training_loop(tmp_path, data_dir):
    workdir = tmp_path / "run"
    cli("fmjax.train", *TINY, f"--workdir={workdir}", f"--config.data.tfds_data_dir={data_dir}",
        "--config.train.steps=10", "--config.train.eval_every=5", "--config.eval.tasks=copa",
        "--config.eval.every=5", "--config.eval.limit=8")
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    steps = [r["step"] for r in rows if "copa/acc" in r]
    assert steps == [5, 10]
    assert all(0.0 <= r["copa/acc_norm"] <= 1.0 for r in rows if "copa/acc" in r)
