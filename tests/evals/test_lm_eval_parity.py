"""Parity with lm-evaluation-harness itself: its HF backend (`lm-eval`, the test extra) and
fmjax score the same tiny random HF model, with its own tokenizer, on the same local JSONL task
(ARC-Easy questions from the shipped data), offline. Every per-choice log-likelihood agrees to
1e-4, every is_greedy flag and every per-sample acc / acc_norm is equal, and so are the task's
acc and acc_norm. GPT-2 (no bos) and a Llama-3-style tokenizer (bos from its post-processor)
cover both ways the harness starts a context."""
import json
import os

import pytest

pytest.importorskip("torch")
lm_eval = pytest.importorskip("lm_eval")

from fmjax import evals  # noqa: E402
from fmjax.evals import multiple_choice, olmo_data, suite  # noqa: E402
from fmjax.generation import loading  # noqa: E402
from fmjax.hf import conversion, tiny_models  # noqa: E402

EXAMPLES = 24
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_task(directory) -> str:
    """ARC-Easy's first validation questions in the harness's arc_easy prompt, as JSONL."""
    path = os.path.join(directory, "arc.jsonl")
    with open(path, "w") as f:
        for row in olmo_data.read("ai2_arc/ARC-Easy", "validation")[:EXAMPLES]:
            f.write(json.dumps({"context": f"Question: {row['question']}\nAnswer:",
                                "choices": row["choices"]["text"],
                                "gold": row["choices"]["label"].index(row["answerKey"])}) + "\n")
    with open(os.path.join(directory, "fmjax_parity.yaml"), "w") as f:
        f.write(TASK_YAML.format(name="fmjax_parity", path=path))
    return path


def run_lm_eval(hf_dir: str, task_dir: str) -> dict:
    from lm_eval.tasks import TaskManager
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    return lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},dtype=float32", tasks=["fmjax_parity"],
        task_manager=TaskManager(include_path=task_dir), batch_size=8, device="cpu",
        log_samples=True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fmjax_scores_equal_lm_evaluation_harness_per_sample(family, tmp_path):
    save = {"gpt2": tiny_models.save_gpt2, "llama": tiny_models.save_llama}[family]
    hf_dir = save(str(tmp_path / "hf"))
    path = write_task(str(tmp_path))
    reference = run_lm_eval(hf_dir, str(tmp_path))
    samples = sorted(reference["samples"]["fmjax_parity"], key=lambda s: s["doc_id"])

    conversion.import_hf(family, hf_dir, str(tmp_path / "ckpt"), log=lambda msg: None)
    engine, params, tokenizer, _ = loading.load_run(str(tmp_path / "ckpt"))
    task = evals.get(f"jsonl:{path}")
    examples = task.load(task.eval_split)
    requests = multiple_choice.requests(task, [ex.context for ex in examples], examples,
                                        tokenizer.encode, tokenizer.prefix_ids)
    results = suite.request_scorer(engine, tokenizer)(params, requests)

    assert len(samples) == len(examples) == EXAMPLES
    i = 0
    for sample, ex in zip(samples, examples):
        theirs = [resp[0] for resp in sample["resps"]]
        ours = results[i:i + len(ex.choices)]
        i += len(ex.choices)
        assert [r.logprob for r in ours] == pytest.approx([ll for ll, _ in theirs], abs=1e-4)
        assert [r.is_greedy for r in ours] == [greedy for _, greedy in theirs]
        mine = multiple_choice.score([ex], ours)
        assert (mine.acc, mine.acc_norm) == (sample["acc"], sample["acc_norm"])
    scores = multiple_choice.score(examples, results)
    row = reference["results"]["fmjax_parity"]
    assert scores.acc == pytest.approx(row["acc,none"], abs=1e-12)
    assert scores.acc_norm == pytest.approx(row["acc_norm,none"], abs=1e-12)
    assert scores.acc_stderr == pytest.approx(row["acc_stderr,none"], rel=1e-9)
