"""Config schema: every field's default lives here, once, with a one-line comment.

Config files in `configs/` call `base_config()` and override only what differs. `validate()`
checks a resolved config before anything is compiled and raises `ConfigError` naming the field,
the value and the fix.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field, the value and the fix."""


# The device mesh's axes, outermost first: (name, config.mesh default, whether the batch is
# split over it, meaning). fmjax/mesh.py builds the mesh from this table and maps logical axes
# onto these names (LOGICAL_RULES; the batch axes come from here); a new axis is one line here
# (plus the rules of the logical axes it shards there).
MESH_AXES = (
    ("data", -1, True, "data-parallel axis size; -1 fills the devices left"),
    ("fsdp", 1, True, "fully-sharded data-parallel axis size (params sharded over it)"),
    ("expert", 1, True, "expert-parallel axis size: MoE experts split over it; dense layers "
                        "see it as more data parallelism (fmjax/nn/moe.py)"),
    ("context", 1, False, "context-parallel axis size: each row's tokens split over it "
                          "(long sequences; docs/long-context.md)"),
    ("tensor", 1, False, "tensor-parallel axis size (heads / MLP sharded over it)"),
)
MESH_AXIS_NAMES = tuple(a[0] for a in MESH_AXES)
BATCH_MESH_AXES = tuple(a[0] for a in MESH_AXES if a[2])  # the batch is split over these


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # root of every random choice: params init, dropout, data order
    c.objective = "causal_lm"  # registered objective name (fmjax/objectives/)
    c.allow_config_change = False  # resume even if model/data keys differ from the checkpoint
    c.init_from = ""  # finetune: pretrain workdir, one of its checkpoint step dirs, or an export
    c.compilation_cache_dir = ""  # JAX's persistent compilation cache in this directory; "" = off

    c.model = m = ml_collections.ConfigDict()
    m.family = "gpt2"  # registered model family (fmjax/models/): gpt2 | llama | bert | t5 | t5_1_1
    m.vocab_size = 4096  # embedding rows; must equal the tokenizer's vocab size
    m.seq_len = 256  # tokens per packed training row
    m.d_model = 256  # residual stream width D
    m.n_layers = 4  # transformer blocks L (encoder-decoder: encoder blocks)
    m.n_decoder_layers = 0  # encoder-decoder (t5): decoder blocks; 0 = n_layers
    m.n_heads = 4  # query heads H
    m.n_kv_heads = 0  # key/value heads for grouped-query attention; 0 = n_heads
    m.head_dim = 0  # per-head width K; 0 = d_model // n_heads
    m.d_ff = 0  # MLP hidden width F; 0 = family default (gpt2, bert, t5: 4D; llama, t5_1_1: 8D/3 rounded up to 256)
    m.max_positions = 0  # learned position table size (gpt2, bert); 0 = seq_len
    m.type_vocab_size = 2  # bert: token-type (segment A/B) embedding rows
    m.relative_buckets = 32  # t5: relative-position buckets of the attention bias
    m.relative_max_distance = 128  # t5: relative distance from which the last bucket is shared
    m.norm_eps = 1e-5  # epsilon of LayerNorm / RMSNorm
    m.rope_theta = 10000.0  # RoPE base frequency (llama)
    m.tie_embeddings = ml_collections.FieldReference(None, field_type=bool)  # None = family default
    m.dropout = 0.0  # dropout rate on residual branches and attention probabilities
    m.dtype = "float32"  # compute dtype of activations and matmuls (bfloat16 on TPU/GPU)
    m.param_dtype = "float32"  # storage dtype of parameters and optimizer state
    m.scan_layers = True  # nn.scan over blocks: one compiled block, fast compile for deep models
    m.remat_policy = "none"  # none | full | dots | dots_no_batch | save_qkv_proj | minimal
    m.attention_impl = "auto"  # auto (fused_cpu, else fmjax, on CPU; xla elsewhere) | fused_cpu (C++ kernel, fmjax/kernels/cpu/attention.py) | fmjax (fmjax/nn/softmax_attention.py, in XLA) | xla | cudnn (jax.nn.dot_product_attention) | splash (TPU Pallas kernel, fmjax/kernels/tpu/splash_attention.py)
    m.init_std = 0.0  # normal init std of weight matrices; 0 = family default (0.02; t5: 1.0 = multiplier of T5's fan-in stds)
    m.vocab_multiple = 1  # pad embedding rows to a multiple (speed); 1 keeps published counts

    m.moe = mo = ml_collections.ConfigDict()  # mixture of experts (fmjax/nn/moe.py)
    mo.num_experts = 0  # routed experts E per sparse MLP; 0 = dense model
    mo.top_k = 2  # experts each token is sent to (Mixtral 2; Switch 1)
    mo.num_shared_experts = 0  # experts every token also passes through (DeepSeek-MoE); 0 = none
    mo.interval = 1  # every interval-th MLP is sparse (the last of each group; Mixtral 1, Switch 2)
    mo.d_ff = 0  # hidden width of one expert (and of each shared expert); 0 = model.d_ff
    mo.router_z_loss = 0.001  # weight of the router z-loss mean(logsumexp(logits)^2) (ST-MoE)
    mo.load_balance_loss = 0.01  # weight of E * sum_e f_e p_e (Switch; 1.0 when balanced)
    mo.capacity_factor = 0.0  # 0 = dropless; else each expert takes ceil(cf * tokens * top_k / E) per group, the rest are dropped
    mo.row_capacity = 0  # 0 = none; else each expert takes at most this many of one batch row's assignments, first come in token order, the rest dropped (Hugging Face Switch's expert_capacity)
    mo.renormalize = True  # top-k weights renormalised to sum to 1 (Mixtral); False: softmax probs (Switch, Qwen-MoE)
    mo.grouped_matmul = "auto"  # the experts' grouped matmul: auto (megablox on TPU, else ragged_dot) | ragged_dot (jax.lax.ragged_dot) | megablox (the Pallas TPU kernel; interpret mode elsewhere: tests only)
    mo.dispatch = "shard_map"  # shard_map (tokens all-gathered over mesh.expert, experts local, reduce-scattered back) | xla (annotations only: XLA partitions the dropless program)

    c.tokenizer = t = ml_collections.ConfigDict()
    t.path = ""  # SentencePiece .model or Hugging Face tokenizer.json; "" = train a SentencePiece model on the corpus and cache it
    t.model_type = "bpe"  # SentencePiece algorithm when training: bpe | unigram
    t.train_chars = 8_000_000  # characters of corpus text used to train the tokenizer
    t.pad_id = 0  # padding id (never a target)
    t.bos_id = 1  # beginning-of-document id
    t.eos_id = 2  # end-of-document id
    t.unk_id = 3  # unknown id (unused with byte fallback, but reserved)
    t.extra_ids = 0  # ids after the pieces: vocab_size = pieces + extra_ids; [MASK] = vocab_size - 1; sentinels: span_corruption.num_sentinels
    t.mask_id = -1  # [MASK] id of the mlm objective and masked-LM scoring; -1 = vocab_size - 1 (an extra id); an imported BERT sets its tokenizer's

    c.data = d = ml_collections.ConfigDict()
    d.source = "stdlib"  # stdlib | local_text | c4/en | lm1b | wiki40b/en | pg19 | tiny_shakespeare (fmjax/data/tfds_text.py) | any TFDS name
    d.mixture = ""  # instead of data.source: "NAME:WEIGHT,..." e.g. "c4/en:0.8,wiki40b/en:0.15,local_text:0.05"; weights = shares of documents
    d.paths = ""  # local_text: comma-separated files or globs of .txt / .jsonl
    d.text_field = "text"  # feature or .jsonl key holding the text (named TFDS datasets know theirs); classification: "premise,hypothesis" = a pair
    d.validation_split = ""  # TFDS split evaluated on; "" = the dataset's own (validation, else test)
    d.tfds_data_dir = os.path.join("~", ".cache", "fmjax", "tfds")  # array_record files: local path or gs://
    d.validation_percent = 5  # stdlib/local_text: % of documents held out, by path hash
    d.shuffle = True  # shuffle training documents (seeded; order = f(seed, epoch, index))
    d.shuffle_buffer = 4096  # packed rows mixed in seeded windows (split over the streams): long files span hundreds of rows
    d.streams = 0  # independent packed row streams S (divides the batch; a process reads only its streams' documents); 0 = one per batch row
    d.num_workers = 0  # grain worker processes (0 = in the main process)
    d.ledger = False  # write a hash of every global batch to WORKDIR/ledger.jsonl
    d.label_field = "label"  # classification sources: feature holding the integer class
    d.max_examples = 0  # classification sources: cap on examples read per split (0 = all)

    c.train = tr = ml_collections.ConfigDict()
    tr.steps = 300  # optimizer updates
    tr.global_batch_size = 16  # rows per update, summed over all processes
    tr.microbatches = 1  # gradient accumulation: split each batch into this many scans
    tr.log_every = 10  # steps between progress lines / metrics.jsonl rows
    tr.eval_every = 100  # steps between validation passes (0 = only at the end)
    tr.eval_batches = 8  # global validation batches per pass (LM; classification evaluates the whole split)
    tr.checkpoint_every = 100  # steps between checkpoints (the last step is always saved)
    tr.checkpoint_every_minutes = 0.0  # also checkpoint when this much time passed (0 = off)
    tr.keep_checkpoints = 3  # most recent checkpoints kept on disk
    tr.keep_period = 0  # also keep every checkpoint whose step is a multiple of this (0 = none)
    tr.async_checkpoints = True  # write checkpoints in a background thread while training goes on
    tr.preemption_grace_seconds = 120.0  # SIGTERM/SIGINT: time allowed to stop and save
    tr.on_nonfinite = "stop"  # NaN/inf loss: stop (exit non-zero) | skip (drop that update)
    tr.sample_prompt = "def "  # prompt of the sample printed in the final report
    tr.sample_tokens = 64  # new tokens in that sample (temperature 0.8, top-k 40, seeded)

    c.optim = o = ml_collections.ConfigDict()
    o.name = "adamw"  # adamw | adafactor
    o.learning_rate = 3e-3  # peak learning rate
    o.schedule = "cosine"  # cosine | linear | rsqrt | wsd | constant (all after warmup)
    o.warmup_steps = 30  # linear warmup from 0
    o.min_lr_ratio = 0.1  # final lr / peak lr for cosine, linear and wsd
    o.wsd_decay_fraction = 0.2  # wsd: fraction of steps spent in the final decay
    o.b1 = 0.9  # Adam beta1
    o.b2 = 0.95  # Adam beta2
    o.eps = 1e-8  # Adam epsilon
    o.weight_decay = 0.1  # decoupled weight decay
    o.decay_norms = False  # apply weight decay to norm scales
    o.decay_biases = False  # apply weight decay to biases
    o.decay_embeddings = False  # apply weight decay to embedding tables
    o.clip_norm = 1.0  # global gradient-norm clip (0 = off)
    o.z_loss = 0.0  # coefficient of log(Z)^2 auxiliary loss (PaLM uses 1e-4)

    c.mlm = ml = ml_collections.ConfigDict()  # objective=mlm (BERT, Devlin et al. 2019, sec. 3.1)
    ml.mask_rate = 0.15  # fraction of each row's real non-special tokens chosen as targets
    ml.mask_fraction = 0.8  # of the chosen tokens: replaced by [MASK] (id vocab_size - 1)
    ml.random_fraction = 0.1  # of the chosen tokens: replaced by a random regular id (rest kept)

    c.span_corruption = sc = ml_collections.ConfigDict()  # objective=span_corruption (T5)
    sc.noise_density = 0.15  # fraction of each packed row's raw tokens that are noise
    sc.mean_span_length = 3.0  # mean length of a noise span (num_spans = noise / this)
    sc.num_sentinels = 0  # sentinel k = pieces + num_sentinels - 1 - k; 0 = every extra id is one (vocab_size - 1 - k); HF T5: 100 (<extra_id_k> = 32099 - k)

    c.prefix_lm = pl = ml_collections.ConfigDict()  # objective=prefix_lm
    pl.min_prefix = 1  # shortest random prefix of a segment (tokens); the longest is len - 1

    c.task = tk = ml_collections.ConfigDict()
    tk.name = "lm"  # finetune task: lm (causal LM, prompt tokens masked) | classification
    tk.num_classes = 0  # classification: number of labels; 0 = read from the dataset
    tk.prompt_field = "prompt"  # lm on .jsonl records: the conditioning text (no loss on it)
    tk.completion_field = "completion"  # lm on .jsonl records: the text that is trained on
    tk.select_metric = "eval_loss"  # finetune: metric that picks the kept best checkpoint
    tk.patience = 0  # finetune: stop after this many evals without improvement (0 = never)

    c.lora = lr = ml_collections.ConfigDict()
    lr.rank = 0  # low-rank adapter rank; 0 = train every weight (full fine-tuning)
    lr.alpha = 16.0  # adapter scale is alpha / rank
    lr.targets = "query,key,value,out,up,gate,down"  # Dense module names whose kernels get adapters

    c.qat = qa = ml_collections.ConfigDict()  # finetune: quantization-aware training (fmjax/quantization/qat.py)
    qa.scheme = ""  # fake-quantize every weight fmjax.quantize would (straight-through gradients) with this scheme: int8 | int4; the same --scheme for the export after; "" = off
    qa.group_size = 128  # int4: contracted inputs that share a scale (the --group_size for the export after)

    c.prune = pr = ml_collections.ConfigDict()  # finetune: gradual pruning (fmjax/pruning/)
    pr.target_sparsity = 0.0  # fraction of each block kernel's weights zeroed from end_step on; 0 = off (one-shot: python -m fmjax.prune)
    pr.pattern = "unstructured"  # unstructured (exactly target_sparsity of each matrix) | N:M, e.g. 2:4 (N of every M kept along the contraction axis, all at end_step; target_sparsity = 1 - N/M)
    pr.method = "magnitude"  # registered weight score (fmjax/pruning/methods/): magnitude | random; the lowest-scoring weights are zeroed
    pr.start_step = 0  # step where the ramp starts from sparsity 0 (cubic, Zhu & Gupta 2017; fmjax/pruning/schedule.py)
    pr.end_step = 1  # step whose weights first have target_sparsity (>= 1 and >= start_step; 1 = one-shot at the first update, then recovery)
    pr.frequency = 10  # steps between mask updates from start_step to end_step

    c.mesh = ms = ml_collections.ConfigDict()  # axis sizes; the axes and comments: MESH_AXES
    for name, default, _, _ in MESH_AXES:
        ms[name] = default

    c.eval = ev = ml_collections.ConfigDict()  # zero/few-shot tasks in the loop (fmjax/evals/)
    ev.tasks = ""  # comma-separated eval task names (or jsonl:PATH); "" = none
    ev.num_fewshot = 0  # solved examples before each question
    ev.every = 0  # steps between evaluations of the tasks (0 = only at the end)
    ev.limit = 0  # score only each task's first N examples (0 = all)
    ev.final_num_fewshot = 0  # after the last step, also score the tasks with this many shots ({task}/{K}shot/acc; the pretraining report prints both); 0 = off

    c.bench = b = ml_collections.ConfigDict()
    b.warmup_steps = 3  # untimed steps after compile
    b.steps = 10  # timed steps; the median is reported

    c.hardware = hw = ml_collections.ConfigDict()
    hw.tpu_slice = ""  # smallest TPU slice the run is meant for (v5p-128; fmjax/aot/tpu_slices.py); python -m fmjax.preflight checks that it fits
    return c


# Keys whose change alters parameter shapes or data order: resuming across them is refused.
SHAPE_KEYS = ("model.family", "model.vocab_size", "model.d_model", "model.n_layers",
              "model.n_heads", "model.n_kv_heads", "model.head_dim", "model.d_ff",
              "model.max_positions", "model.tie_embeddings", "model.scan_layers",
              "model.n_decoder_layers", "model.type_vocab_size", "model.relative_buckets",
              "model.moe.num_experts", "model.moe.num_shared_experts", "model.moe.interval",
              "model.moe.d_ff", "optim.name")
DATA_ORDER_KEYS = ("seed", "data.source", "data.mixture", "data.paths", "data.shuffle",
                   "data.shuffle_buffer", "data.streams",
                   "model.seq_len", "train.global_batch_size", "objective",
                   "span_corruption.noise_density", "span_corruption.mean_span_length")


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += flat_keys(v, prefix + k + ".")
        else:
            keys.append(prefix + k)
    return keys


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
    """Sets dotted keys; an unknown key fails with a did-you-mean over all known keys."""
    known = flat_keys(config)
    for dotted, value in overrides.items():
        if dotted not in known:
            raise ConfigError(f"unknown config key '{dotted}'.{did_you_mean(dotted, known)}")
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `to_json`, starting from the defaults so new fields keep their defaults."""
    return from_json_dict(json.loads(text))


def from_json_dict(values: dict) -> ml_collections.ConfigDict:
    config = base_config()

    def merge(node, values):
        for k, v in values.items():
            if k in node and isinstance(node[k], ml_collections.ConfigDict):
                merge(node[k], v)
            else:
                node[k] = v

    merge(config, values)
    return config


def diff(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict, keys) -> list[str]:
    """The keys among `keys` whose values differ, as 'key: old -> new'."""
    out = []
    for k in keys:
        a, b = get(old, k), get(new, k)
        if a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def _fail(field: str, value, why: str, fix: str):
    raise ConfigError(f"config.{field} = {value!r}: {why}; {fix}")


def validate(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1):
    """Checks that need no compile. Mesh, model and batch arithmetic; raises ConfigError."""
    m, tr = config.model, config.train
    for field in ("d_model", "n_layers", "n_heads", "seq_len", "vocab_size"):
        if m[field] <= 0:
            _fail(f"model.{field}", m[field], "must be positive", f"set --config.model.{field}")
    if m.head_dim == 0 and m.d_model % m.n_heads:
        _fail("model.n_heads", m.n_heads, f"does not divide model.d_model = {m.d_model}",
              "choose n_heads dividing d_model, or set --config.model.head_dim explicitly")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads % kv:
        _fail("model.n_kv_heads", m.n_kv_heads, f"does not divide model.n_heads = {m.n_heads}",
              "grouped-query attention needs n_heads to be a multiple of n_kv_heads")
    for field in ("dtype", "param_dtype"):
        if m[field] not in ("float32", "bfloat16", "float16"):
            _fail(f"model.{field}", m[field], "unsupported dtype", "use float32 or bfloat16")

    sizes = {k: config.mesh[k] for k in MESH_AXIS_NAMES}
    fills = [k for k, v in sizes.items() if v == -1]
    if len(fills) > 1:
        _fail(f"mesh.{fills[1]}", -1, "only one mesh axis may be -1", "give the others sizes")
    for k, v in sizes.items():
        if v == 0 or v < -1:
            _fail(f"mesh.{k}", v, "must be positive or -1", f"set --config.mesh.{k}=1")
    fixed = 1
    for v in sizes.values():
        fixed *= v if v != -1 else 1
    if fills:
        if num_devices % fixed:
            _fail(f"mesh.{fills[0]}", -1,
                  f"the other axes multiply to {fixed}, which does not divide {num_devices} devices",
                  "make the fixed axes' product divide the device count")
        sizes[fills[0]] = num_devices // fixed
    product = 1
    for v in sizes.values():
        product *= v
    if product != num_devices:
        _fail("mesh", sizes, f"{'*'.join(sizes)} = {product} but {num_devices} devices are visible",
              "set --config.mesh.data=-1 to fill the rest")
    for field, heads in (("n_heads", m.n_heads), ("n_kv_heads", kv)):
        if heads % sizes["tensor"]:
            _fail("mesh.tensor", sizes["tensor"], f"does not divide model.{field} = {heads}",
                  f"choose a tensor axis that divides {heads}, e.g. --config.mesh.tensor=1")
    validate_moe(m, sizes)
    validate_context(m, sizes["context"])

    batch_shards = 1
    for k in BATCH_MESH_AXES:
        batch_shards *= sizes[k]
    if tr.global_batch_size % num_processes:
        _fail("train.global_batch_size", tr.global_batch_size,
              f"not divisible by the {num_processes} processes", "use a multiple of the process count")
    if tr.global_batch_size % (batch_shards * tr.microbatches):
        _fail("train.global_batch_size", tr.global_batch_size,
              f"not divisible by mesh {'*'.join(BATCH_MESH_AXES)} ({batch_shards}) x "
              f"train.microbatches "
              f"({tr.microbatches})", f"use a multiple of {batch_shards * tr.microbatches}")
    if tr.on_nonfinite not in ("stop", "skip"):
        _fail("train.on_nonfinite", tr.on_nonfinite, "unknown policy", "use stop or skip")
    if tr.keep_checkpoints < 2:
        _fail("train.keep_checkpoints", tr.keep_checkpoints,
              "a damaged newest checkpoint needs an older one to fall back to", "keep at least 2")
    for field in ("steps", "log_every"):
        if tr[field] <= 0:
            _fail(f"train.{field}", tr[field], "must be positive", f"set --config.train.{field}")
    validate_prune(config.prune)
    return sizes


def validate_moe(m, sizes: dict) -> None:
    """config.model.moe against the model and the mesh (sizes resolved): nothing to check for a
    dense model (num_experts 0) but the sign."""
    mo = m.moe
    if mo.num_experts < 0:
        _fail("model.moe.num_experts", mo.num_experts, "must be >= 0",
              "set --config.model.moe.num_experts=0 for a dense model, or e.g. 8")
    if mo.num_experts == 0:
        return
    if not 1 <= mo.top_k <= mo.num_experts:
        _fail("model.moe.top_k", mo.top_k, f"must be between 1 and model.moe.num_experts = "
              f"{mo.num_experts}", f"set --config.model.moe.top_k={min(2, mo.num_experts)}")
    if mo.num_experts % sizes["expert"]:
        _fail("model.moe.num_experts", mo.num_experts, f"not divisible by mesh.expert = "
              f"{sizes['expert']} (each device of an expert group holds E / mesh.expert experts)",
              "choose a mesh.expert that divides num_experts, e.g. --config.mesh.expert=1")
    if mo.interval < 1:
        _fail("model.moe.interval", mo.interval, "must be >= 1",
              "set --config.model.moe.interval=1 (every MLP sparse) or 2 (every other one)")
    for field in ("n_layers", "n_decoder_layers"):
        if m[field] % mo.interval:
            _fail("model.moe.interval", mo.interval, f"does not divide model.{field} = "
                  f"{m[field]} (layers are stacked in groups of interval, the last one sparse)",
                  f"choose an interval dividing {m[field]}")
    for field in ("num_shared_experts", "d_ff", "router_z_loss", "load_balance_loss",
                  "capacity_factor", "row_capacity"):
        if mo[field] < 0:
            _fail(f"model.moe.{field}", mo[field], "must be >= 0",
                  f"set --config.model.moe.{field}=0")
    if mo.capacity_factor > 0 and mo.row_capacity > 0:
        _fail("model.moe.row_capacity", mo.row_capacity, "set together with model.moe."
              f"capacity_factor = {mo.capacity_factor} (one capacity rule at a time)",
              "set --config.model.moe.row_capacity=0 or --config.model.moe.capacity_factor=0")
    d_ff = mo.d_ff or m.d_ff
    if d_ff and d_ff % sizes["tensor"]:
        _fail("mesh.tensor", sizes["tensor"], f"does not divide the expert width {d_ff} "
              "(model.moe.d_ff, else model.d_ff)", "choose a tensor axis that divides it")
    if mo.dispatch not in ("shard_map", "xla"):
        _fail("model.moe.dispatch", mo.dispatch, "unknown dispatch", "use shard_map or xla")
    if mo.grouped_matmul not in ("auto", "ragged_dot", "megablox"):
        _fail("model.moe.grouped_matmul", mo.grouped_matmul, "unknown grouped matmul",
              "use auto, ragged_dot or megablox")


# model.attention_impl values that run with mesh.context > 1 (fmjax/nn/context_attention.py,
# in XLA); fused_cpu, cudnn and splash need whole rows
CONTEXT_ATTENTION_IMPLS = ("auto", "fmjax", "xla")


def validate_context(m, context: int) -> None:
    """config.model against mesh.context (resolved): rows cut into 2 x context chunks (causal
    load balancing, fmjax/nn/context_parallel.py), attention that can split them, no
    attention dropout. Encoder-decoders are refused when traced (fmjax/nn/attention.py)."""
    if context == 1:
        return
    multiple = 2 * context
    if m.seq_len % multiple:
        _fail("model.seq_len", m.seq_len, f"not a multiple of 2 x mesh.context = {multiple} "
              "(each context shard holds an early and a late chunk of every row)",
              f"set --config.model.seq_len={-(-m.seq_len // multiple) * multiple}, or a "
              "mesh.context whose double divides it")
    if m.attention_impl not in CONTEXT_ATTENTION_IMPLS:
        _fail("model.attention_impl", m.attention_impl, f"its kernel needs whole rows and "
              f"mesh.context = {context} splits them",
              "set --config.model.attention_impl=xla (auto picks it too), or --config.mesh.context=1")
    if m.dropout > 0:
        _fail("model.dropout", m.dropout, f"attention dropout is not implemented with "
              f"mesh.context = {context}", "set --config.model.dropout=0, or --config.mesh.context=1")


def parse_pattern(pattern: str, field: str = "config.prune.pattern") -> tuple[int, int] | None:
    """"unstructured" -> None; "N:M" -> (N, M) with 0 < N < M; anything else a ConfigError."""
    if pattern == "unstructured":
        return None
    parts = pattern.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and 0 < int(parts[0]) < int(parts[1]):
        return int(parts[0]), int(parts[1])
    raise ConfigError(f"{field} = {pattern!r}: not a pruning pattern; use unstructured or N:M "
                      "with 0 < N < M, e.g. 2:4")


def validate_prune(pr) -> None:
    """config.prune: sparsity in [0, 1), a known pattern (N:M fixes the sparsity at 1 - N/M),
    0 <= start_step <= end_step, frequency >= 1."""
    if not 0.0 <= pr.target_sparsity < 1.0:
        _fail("prune.target_sparsity", pr.target_sparsity, "must be in [0, 1)",
              "set --config.prune.target_sparsity=0.5, say (0 = no pruning)")
    nm = parse_pattern(pr.pattern)
    if pr.target_sparsity == 0.0:
        return
    if nm is not None and abs(pr.target_sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        _fail("prune.target_sparsity", pr.target_sparsity,
              f"prune.pattern = {pr.pattern!r} keeps {nm[0]} of every {nm[1]} weights",
              f"set --config.prune.target_sparsity={1 - nm[0] / nm[1]:g}")
    if pr.start_step < 0:
        _fail("prune.start_step", pr.start_step, "must be >= 0", "set --config.prune.start_step=0")
    if pr.end_step < 1:
        _fail("prune.end_step", pr.end_step, "must be >= 1 (step 0 is the loaded weights)",
              "set --config.prune.end_step=1 to prune at the first update, or later to ramp")
    if pr.end_step < pr.start_step:
        _fail("prune.end_step", pr.end_step, f"is before prune.start_step = {pr.start_step}",
              f"set --config.prune.end_step to at least {pr.start_step}")
    if pr.frequency < 1:
        _fail("prune.frequency", pr.frequency, "must be >= 1", "set --config.prune.frequency=10")


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of configs/NAME.py next to `config_file` (pass `__file__`), so a paper
    config can start from its smaller sibling wherever the process was started."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
    spec = importlib.util.spec_from_file_location(f"fmjax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
