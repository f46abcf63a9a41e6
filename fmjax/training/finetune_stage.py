"""The fine-tune stage: pretrained params (no optimizer state) -> a task's model (maybe with a
new head, maybe with LoRA adapters) -> the shared loop (fmjax.training.loop: its own workdir,
checkpoints, resume, preemption, metrics) -> the best checkpoint by `task.select_metric`
exported to WORKDIR/best -> a report. `python -m fmjax.finetune` is a thin CLI over
`finetune(config, workdir)`.

The model's shape, the tokenizer and its special ids come from the pretrained checkpoint
(config.model.* from the fine-tune config is ignored except the runtime keys in RUNTIME_KEYS),
so a fine-tune config only says what is new: task, data, optimizer, steps, LoRA.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from typing import Sequence

import jax

from fmjax import config as config_lib, mesh as mesh_lib, models, tasks
from fmjax.data import tokenizer_files
from fmjax.nn import lora
from fmjax.quantization import guard as quantization_guard, qat, qlora
from fmjax.pruning import hook as pruning
from fmjax.tasks import scores
from fmjax.training import checkpoint, engine as engine_lib, loop
from fmjax.training import workdir as workdir_lib

# config.model keys a fine-tune may change without changing any parameter's shape.
RUNTIME_KEYS = ("dropout", "dtype", "remat_policy", "attention_impl")
BEST_DIR = "best"


@dataclasses.dataclass
class Report:
    steps: int
    task: str
    best_step: int
    select_metric: str
    best: dict  # eval metrics at the best step
    pretrain: dict  # the pretraining run's last eval metrics (when init_from is a workdir)
    best_dir: str
    preempted: bool = False
    early_stopped: bool = False

    def text(self) -> str:
        if self.preempted:
            return (f"fmjax fine-tune preempted at step {self.steps}; run the same command again "
                    "to resume.")
        rows = [("pretrain validation loss", self.pretrain.get("eval_loss")),
                ("pretrain validation perplexity", self.pretrain.get("eval_perplexity"))]
        for key in ("eval_loss", "eval_perplexity", "eval_accuracy", "eval_f1", "eval_precision",
                    "eval_recall", "eval_auc", "eval_majority_baseline"):
            if key in self.best:
                rows.append((f"fine-tune {key[5:].replace('_', ' ')}", self.best[key]))
        width = max(len(name) for name, _ in rows)
        lines = ["=" * 72,
                 f"fmjax fine-tune ({self.task}) finished: {self.steps} steps"
                 + (" (early stop)" if self.early_stopped else "")
                 + f"; best {self.select_metric} at step {self.best_step}"]
        for name, value in rows:
            text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
                else f"{value:.4f}"
            lines.append(f"  {name.ljust(width)}  {text}")
        lines += [f"  best checkpoint (params only)  {self.best_dir}", "=" * 72]
        return "\n".join(lines)


def inherit_pretrained(config, saved: dict, *, tokenizer_ids: bool = True):
    """config with the pretrained run's model shape and (with `tokenizer_ids`) tokenizer ids
    (a copy)."""
    config = config_lib.from_json_dict(json.loads(config_lib.to_json(config)))
    pretrained = config_lib.from_json_dict(saved)
    for key in config_lib.flat_keys(pretrained.model):  # dotted below sections: moe.top_k
        if key.split(".")[0] not in RUNTIME_KEYS:
            *parents, leaf = key.split(".")
            node, saved_node = config.model, pretrained.model
            for p in parents:
                node, saved_node = node[p], saved_node[p]
            node[leaf] = saved_node[leaf]
    # ids past the tokenizer's pieces belong to the embedding table ([MASK], sentinels)
    config.tokenizer.extra_ids = pretrained.tokenizer.extra_ids
    for key in ("pad_id", "bos_id", "eos_id", "unk_id", "mask_id", "model_type") if tokenizer_ids else ():
        config.tokenizer[key] = pretrained.tokenizer[key]
    return config


def own_tokenizer_bytes(config, source: str) -> bytes:
    """config.tokenizer.path's bytes, for a pretrained checkpoint that stores no tokenizer (one
    converted from a Hugging Face directory without tokenizer files)."""
    path = os.path.expanduser(config.tokenizer.path)
    if not path or not os.path.isfile(path):
        raise config_lib.ConfigError(
            f"config.tokenizer.path = {config.tokenizer.path!r}: config.init_from = {source} "
            "stores no tokenizer (converted from a Hugging Face directory without tokenizer "
            "files); set --config.tokenizer.path to the model's tokenizer.json or SentencePiece "
            ".model (and --config.tokenizer.*_id to its special ids)")
    with open(path, "rb") as f:
        return f.read()


def _subtree(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _replace_subtree(tree, path, value):
    if not path:
        return value
    return {**tree, path[0]: _replace_subtree(tree[path[0]], path[1:], value)}


def pretrain_workdir(step_dir: str) -> str:
    """WORKDIR for WORKDIR/checkpoints/STEP; an export is its own directory."""
    parent = os.path.dirname(step_dir.rstrip("/"))
    return os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else step_dir


def last_eval(workdir: str) -> dict:
    """The last row with eval metrics in a run's metrics.jsonl ({} if there is none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    last = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if "eval_loss" in row:
                    last = row
    return last


class BestKeeper:
    """Tracks `task.select_metric`; on a new best exports the model's params (LoRA merged) to
    WORKDIR/best; asks the loop to stop after `task.patience` evals without improvement."""

    def __init__(self, config, workdir: str, engine, tokenizer_bytes: bytes, qlora_base=None):
        """qlora_base: (qlora.QuantizedBaseModel, the checkpoint's quantization entry, its
        path) when the run trains adapters over a quantized checkpoint; the export is then a
        quantized checkpoint too (quantization/qlora.py)."""
        self.config, self.engine, self.tokenizer_bytes = config, engine, tokenizer_bytes
        self.qlora_base = qlora_base
        self.dir = os.path.join(workdir, BEST_DIR)
        self.state_path = os.path.join(workdir, "best_tracker.json")
        self.tracker = scores.BestTracker(config.task.select_metric)
        self.metrics: dict = {}
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                saved = json.load(f)
            self.tracker = scores.BestTracker.from_state_dict(
                saved["tracker"], metric_name=config.task.select_metric)
            self.metrics = saved["metrics"]
        self.early_stopped = False
        self.first_step = pruning.first_candidate_step(config)  # sparser models score worse

    def __call__(self, step: int, state, ctx) -> None:
        """A loop hook after the task's evaluation (`ctx.metrics`)."""
        metrics = ctx.metrics
        if self.tracker.best_step == step:  # a resumed run re-evaluates its restored step
            return
        if step < self.first_step:  # config.prune: not yet at the target sparsity
            return
        if self.tracker.update(step, metrics):
            self.metrics = dict(metrics)
            if jax.process_index() == 0 and os.path.exists(self.dir + ".tmp"):
                shutil.rmtree(self.dir + ".tmp")
            self._export(self.dir + ".tmp", state.params)
            if jax.process_index() == 0:
                if os.path.exists(self.dir):
                    shutil.rmtree(self.dir)
                os.replace(self.dir + ".tmp", self.dir)
        if jax.process_index() == 0:
            with open(self.state_path, "w") as f:
                json.dump({"tracker": self.tracker.state_dict(), "metrics": self.metrics}, f)
        self.early_stopped = self.tracker.should_stop(self.config.task.patience)
        if self.early_stopped:
            ctx.stop_early()

    def _export(self, path: str, params) -> None:
        """The params-only export of the run's state params (LoRA merged, or beside a
        quantized base's kernels)."""
        config_dict = self.config.to_dict()
        if self.qlora_base:
            model, entry, base = self.qlora_base
            qlora.export(path, params, model, config_dict, entry, base, self.tokenizer_bytes)
            return
        if self.config.lora.rank > 0:
            params = lora.merge_state_params(params, self.config.lora)
            config_dict["lora"]["rank"] = 0
        checkpoint.export_params(path, params, config_dict, self.tokenizer_bytes)


def finetune(config, workdir: str, hooks: Sequence[loop.Hook] = ()) -> Report:
    """Fine-tunes from config.init_from in `workdir`; `hooks` run after the evaluation and
    best-checkpoint hooks at their own steps (see loop.Hook)."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    if not config.init_from:
        raise config_lib.ConfigError(
            "config.init_from = '': fine-tuning starts from pretrained weights; set "
            "--config.init_from=PRETRAIN_WORKDIR (or one of its checkpoints/STEP dirs, or an "
            "export from fmjax.export)")
    # the step directory (or export) is resolved once: a workdir's latest step could move on
    try:
        source, _ = checkpoint.resolve_params_source(config.init_from)
    except checkpoint.NotACheckpoint as e:
        raise config_lib.ConfigError(
            f"config.init_from = {config.init_from!r}: {e}; set --config.init_from to a "
            "pretraining workdir, one of its checkpoints/STEP dirs, or an export") from None
    saved, tokenizer_bytes = checkpoint.read_source(source)
    quantized = quantization_guard.quantization_of(saved)  # a QLoRA base (quantization/qlora.py)
    if quantized:
        qlora.check(config, quantized)
    has_tokenizer = bool(tokenizer_bytes)
    if not has_tokenizer:
        tokenizer_bytes = own_tokenizer_bytes(config, source)
    config = inherit_pretrained(config, saved, tokenizer_ids=has_tokenizer)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(checkpoint.tokenizer_path(workdir), "wb") as f:
            f.write(tokenizer_bytes)
    config.tokenizer.path = checkpoint.tokenizer_path(workdir)
    config_lib.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    models.resolve(config.model)  # the model's own checks (layers, attention), before any data
    tokenizer = tokenizer_files.open_tokenizer(config.tokenizer.path, config)
    tokenizer.check_against(config)
    workdir_lib.prepare_workdir(config, workdir, tokenizer)

    mesh = mesh_lib.make_mesh(config)
    task = tasks.get(config)(config, tokenizer)
    # config.qat: the weights fake-quantized in every forward pass, training and evaluation
    model = qat.wrap(config, task.model, task.model_config.seq_len, mesh)
    if quantized:  # the pretrained part's weights are the checkpoint's integers and scales
        model = qlora.wrap(quantized, model, task.model_config.seq_len, mesh, task.backbone_path)
    engine = engine_lib.build(config, mesh, model=model, model_config=task.model_config,
                              objective=task.objective, train_prefixes=task.head_prefixes)
    engine = pruning.attach(config, engine)  # config.prune: masks in the optimizer state
    pruning.check_resume(config, workdir)
    path = ((lora.MODEL_KEY,) if config.lora.rank > 0 else ()) + task.backbone_path

    def init_state():
        state = engine.init_state()
        where = (_subtree(engine.abstract_state.params, path),
                 _subtree(engine.shardings.params, path))
        if quantized:
            pretrained = qlora.load_base(source, *where)
        else:
            pretrained, _, _ = checkpoint.load_params(source, *where)
        return state.replace(params=_replace_subtree(state.params, path, pretrained))

    keeper = BestKeeper(config, workdir, engine, tokenizer_bytes,
                        qlora_base=(model, quantized, source) if quantized else None)
    plan = loop.Plan(
        engine=engine, train_iter=task.train_iter, init_state=init_state,
        tokenizer_bytes=tokenizer_bytes, flops_per_token=engine.flops_per_token(),
        tokens_per_step=engine.tokens_per_step())
    every = config.train.eval_every
    plan.add_hook(lambda step, state, ctx: task.evaluate(engine, state.params, ctx.abandon),
                  every=every, at_start=every > 0)
    plan.add_hook(keeper, every=every, at_start=every > 0)  # after the evaluation: its metrics
    if pruning.enabled(config):
        plan.add_hook(pruning.sparsity_hook(engine), every=every, at_start=every > 0)
    if config.eval.tasks:
        if config.task.name != "lm":
            raise config_lib.ConfigError(
                f"config.eval.tasks = {config.eval.tasks!r}: zero/few-shot tasks score a language "
                f"model, and task.name = {config.task.name!r} trains a classifier; unset "
                "--config.eval.tasks or fine-tune with task.name=lm")
        from fmjax.evals import suite
        plan.add_hook(suite.loop_hook(engine, tokenizer, config.eval), every=config.eval.every)
    plan.hooks.extend(hooks)
    if jax.process_index() == 0:
        trainable = (sum(x.size for x in jax.tree.leaves(engine.abstract_state.params[lora.LORA_KEY]))
                     if config.lora.rank > 0 else engine.num_params())
        print(f"fine-tune {config.task.name} from {source}: {task.describe}; "
              f"{engine.num_params():,} parameters, {trainable:,} trained; mesh "
              f"{dict(mesh.shape)}" + (f"; quantization-aware ({config.qat.scheme}: weights "
              "fake-quantized in training and evaluation)" if config.qat.scheme else ""),
              flush=True)
    result = loop.run(config, workdir, plan)
    return Report(steps=result.step, task=config.task.name, best_step=keeper.tracker.best_step or 0,
                  select_metric=config.task.select_metric, best=keeper.metrics,
                  pretrain=last_eval(pretrain_workdir(source)),
                  best_dir=keeper.dir, preempted=result.preempted,
                  early_stopped=keeper.early_stopped)
