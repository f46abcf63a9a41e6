"""The pretraining report's eval-task line and the end-of-run few-shot hook: the hook scores
config.eval.tasks at eval.final_num_fewshot shots under its own metric names, the report reads
both accuracies back with the task's chance and size, and prints them last."""
from fmjax.config import base_config
from fmjax.evals import suite
from fmjax.training import loop, pretrain_stage


def eval_config(**fields):
    c = base_config().eval
    c.update(dict(tasks="stdlib_next_line", every=80, limit=200, final_num_fewshot=3), **fields)
    return c


def test_final_fewshot_hook_renames_the_metrics_and_asks_for_k_shots(monkeypatch):
    asked = []

    def fake_loop_hook(engine, tokenizer, config):
        asked.append(config.num_fewshot)
        return lambda step, state, ctx: {"stdlib_next_line/acc": 0.5,
                                         "stdlib_next_line/acc_norm": 0.4}

    monkeypatch.setattr(suite, "loop_hook", fake_loop_hook)
    config = eval_config()
    hook = pretrain_stage.final_fewshot_hook(None, None, config)
    assert hook(160, None, None) == {"stdlib_next_line/3shot/acc": 0.5,
                                     "stdlib_next_line/3shot/acc_norm": 0.4}
    assert asked == [3] and config.num_fewshot == 0  # the run's own config is untouched

    plan = loop.Plan(engine=None, train_iter=None, init_state=None, tokenizer_bytes=b"",
                     flops_per_token=1.0, tokens_per_step=1)
    pretrain_stage.add_eval_task_hooks(plan, None, None, config)
    in_loop, final = plan.hooks
    assert (in_loop.every, in_loop.at_end, final.every, final.at_end) == (80, True, 0, True)
    assert [h.due(160, 160) for h in plan.hooks] == [True, True]
    assert [h.due(80, 160) for h in plan.hooks] == [True, False]  # few-shot: only at the end
    plan.hooks.clear()
    pretrain_stage.add_eval_task_hooks(plan, None, None, eval_config(final_num_fewshot=0))
    assert len(plan.hooks) == 1
    pretrain_stage.add_eval_task_hooks(plan, None, None, eval_config(tasks=" "))
    assert len(plan.hooks) == 1


def test_report_ends_with_the_accuracy_line():
    metrics = {"eval_loss": 5.2, "stdlib_next_line/acc": 0.41, "stdlib_next_line/acc_norm": 0.2,
               "stdlib_next_line/3shot/acc": 0.455}
    tasks = pretrain_stage.task_accuracy(eval_config(), metrics)
    line = "  stdlib_next_line acc  0-shot 0.41  3-shot 0.46  (chance 0.25, n=200)"
    assert [t.line() for t in tasks] == [line]
    report = pretrain_stage.Report(
        steps=160, train_loss=5.0, eval_loss=5.2, eval_perplexity=181.0, tokens_per_sec=1.0,
        mfu=0.5, mfu_convention="x", num_params=1, checkpoint_dir="c", metrics_path="m",
        sample="def f():\n    pass", task_accuracy=tasks)
    assert report.text().splitlines()[-2:] == [line, "=" * 72]
    # a run whose tasks were not scored at the end (resumed after its last step) has no line
    assert pretrain_stage.task_accuracy(eval_config(), {"eval_loss": 5.2}) == []
    assert pretrain_stage.task_accuracy(eval_config(tasks=""), metrics) == []
