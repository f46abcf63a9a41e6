"""Prompt/completion fine-tuning data: .jsonl records -> one row per example, prompt masked.

  open_prompt_completion(config, split)                -> list of {'prompt', 'completion'}
  encode_prompt_completion(tokenizer, p, c, seq_len)   -> one row (dict of int32 [T])
  make_prompt_completion_train_iterator(config, tok)   -> endless, checkpointable iterator
  make_prompt_completion_eval_batches(config, tok)     -> one pass over validation, as a list

Records: `config.data.paths` (comma-separated .jsonl files or globs, as for local_text) hold one
JSON object per non-empty line, its prompt under `config.task.prompt_field` and its completion
under `config.task.completion_field` (both strings). A record's split is a pure function of its
text: `hash_split.split_for_key(json.dumps([prompt, completion]), validation_percent)`, so
reordering, moving or adding records never moves one across the boundary, and duplicates land
on the same side. `config.data.max_examples` keeps the first N records (file order) per split.

A row is `[bos] + encode(prompt) + encode(completion) + [eos]`, then padded to T = seq_len:
  tokens       int32 [T]  the ids, pad_id after the example
  segment_ids  int32 [T]  1 on the example's tokens, 0 on padding
  positions    int32 [T]  0, 1, ... on the example's tokens, 0 on padding
  loss_mask    int32 [T]  1 exactly on the completion tokens and the eos, 0 on bos, prompt and
                          padding (the causal_lm objective turns it into next-token weights)
Truncation, when the row is longer than T: the completion and eos are kept whole if
`1 + len(completion) + 1 <= T` and the prompt loses its BEGINNING (the tokens nearest the
completion are kept); otherwise the prompt is dropped and the row is `[bos]` + the first T - 1
completion tokens, with no eos (a cut completion must not teach the model to stop there).
Batches are dicts of [B, T] arrays under those keys, B = global_batch_size // process_count.
"""
from __future__ import annotations

import json

import grain
import numpy as np

from fmjax.config import ConfigError
from fmjax.data import hash_split, pipeline
from fmjax.data.text_files import resolve_paths

TOKENS, SEGMENT_IDS, POSITIONS, LOSS_MASK = "tokens", "segment_ids", "positions", "loss_mask"
PROMPT, COMPLETION = "prompt", "completion"
SPLITS = (hash_split.TRAIN, hash_split.VALIDATION)


# ----------------------------------------------------------------------------- records


def record_key(prompt: str, completion: str) -> str:
    """The text that decides a record's split: both fields, unambiguously joined."""
    return json.dumps([prompt, completion], ensure_ascii=False)


def split_of(prompt: str, completion: str, validation_percent: int) -> str:
    return hash_split.split_for_key(record_key(prompt, completion), validation_percent)


def read_records(path: str, *, prompt_field: str, completion_field: str):
    """Yields (line number, prompt, completion) of each non-empty line of the .jsonl `path`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"config.data.paths: {path}:{line_number} is not valid JSON ({e.msg}); "
                    "every line of a .jsonl file must be one JSON object") from None
            yield (line_number,
                   record_field(record, path, line_number, "prompt_field", prompt_field),
                   record_field(record, path, line_number, "completion_field",
                                completion_field))


def record_field(record, path: str, line_number: int, flag: str, field: str) -> str:
    """record[field] as a string; a ConfigError naming file, line, field and fix otherwise."""
    if not isinstance(record, dict) or field not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise ConfigError(
            f"config.task.{flag} = {field!r}: {path}:{line_number} has no key {field!r} (it "
            f"has: {keys}); set --config.task.{flag} to the key holding that text, or fix the "
            "record")
    value = record[field]
    if not isinstance(value, str):
        raise ConfigError(
            f"config.task.{flag} = {field!r}: {path}:{line_number} holds a "
            f"{type(value).__name__} under {field!r}, not a string; make it a JSON string or "
            f"set --config.task.{flag} to a text key")
    return value


def check_max_examples(max_examples) -> int:
    if not isinstance(max_examples, int) or max_examples < 0:
        raise ConfigError(f"config.data.max_examples = {max_examples!r}: must be an integer "
                          ">= 0 (0 = all examples); set --config.data.max_examples=0")
    return max_examples


def open_prompt_completion(config, split: str) -> list[dict[str, str]]:
    """Every record of `split` ('train' or 'validation') as {'prompt', 'completion'}, in file
    order (files in `config.data.paths` order), capped at `config.data.max_examples`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    validation_percent = hash_split.check_validation_percent(config.data.validation_percent)
    cap = check_max_examples(config.data.max_examples)
    paths = resolve_paths(config.data.paths)
    for path in paths:
        if not path.endswith(".jsonl"):
            raise ConfigError(
                f"config.data.paths = {config.data.paths!r}: {path} is not a .jsonl file; "
                "prompt/completion records are read from .jsonl files (one JSON object per "
                "line), so list only those")
    records = []
    for path in paths:
        for _, prompt, completion in read_records(
                path, prompt_field=config.task.prompt_field,
                completion_field=config.task.completion_field):
            if split_of(prompt, completion, validation_percent) == split:
                records.append({PROMPT: prompt, COMPLETION: completion})
                if len(records) == cap:
                    return records
    return records


# ----------------------------------------------------------------------------- rows


def padding_row(seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """A row that is no example: pad tokens, segment 0, loss mask 0."""
    return {TOKENS: np.full(seq_len, pad_id, np.int32), SEGMENT_IDS: np.zeros(seq_len, np.int32),
            POSITIONS: np.zeros(seq_len, np.int32), LOSS_MASK: np.zeros(seq_len, np.int32)}


def encode_prompt_completion(tokenizer, prompt: str, completion: str,
                             seq_len: int) -> dict[str, np.ndarray]:
    """One padded row (module docstring: layout and truncation rule)."""
    prompt_ids = tokenizer.encode(prompt)
    target_ids = [*tokenizer.encode(completion), tokenizer.eos_id]
    if 1 + len(target_ids) > seq_len:  # the completion alone does not fit: keep its start
        prompt_ids, target_ids = [], target_ids[:seq_len - 1]
    else:  # cut the prompt's beginning, keeping the tokens next to the completion
        room = seq_len - 1 - len(target_ids)
        prompt_ids = prompt_ids[max(len(prompt_ids) - room, 0):]
    ids = [tokenizer.bos_id, *prompt_ids, *target_ids]
    n, start = len(ids), 1 + len(prompt_ids)
    row = padding_row(seq_len, tokenizer.pad_id)
    row[TOKENS][:n] = ids
    row[SEGMENT_IDS][:n] = 1
    row[POSITIONS][:n] = np.arange(n)
    row[LOSS_MASK][start:n] = 1
    return row


class EncodePromptCompletion(grain.transforms.Map):
    """{'prompt', 'completion'} -> one row (the tokenizer pickles as its path, for workers)."""

    def __init__(self, tokenizer, seq_len: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len

    def map(self, record):
        return encode_prompt_completion(self.tokenizer, record[PROMPT], record[COMPLETION],
                                        self.seq_len)


# ----------------------------------------------------------------------------- batches


def train_dataset(config, tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None,
                  records: list[dict[str, str]] | None = None) -> grain.IterDataset:
    """This process's records (every count-th from index), shuffled per epoch (order =
    f(seed, epoch, index)), repeated forever, encoded, batched."""
    index, count, batch_size = pipeline.process_shard(config.train.global_batch_size,
                                                        process_index, process_count)
    records = open_prompt_completion(config, hash_split.TRAIN) if records is None else records
    examples = grain.MapDataset.source(records)[index::count]
    if len(examples) == 0:
        raise ConfigError(
            f"config.data.paths = {config.data.paths!r}: {len(records)} training records, too "
            f"few for {count} processes (process {index} gets none); add records or lower "
            "--config.data.validation_percent")
    return pipeline.example_batches(
        examples, EncodePromptCompletion(tokenizer, config.model.seq_len), config, batch_size,
        shuffle_purpose="prompt_completion")


def make_prompt_completion_train_iterator(config, tokenizer, *, process_index: int | None = None,
                                          process_count: int | None = None,
                                          records: list[dict[str, str]] | None = None
                                          ) -> grain.DatasetIterator:
    """An endless iterator of this process's batches; `get_state()` / `set_state()` (JSON
    values, or orbax via grain.checkpoint.CheckpointSave) resume it exactly."""
    return iter(train_dataset(config, tokenizer, process_index=process_index,
                              process_count=process_count, records=records))


def make_prompt_completion_eval_batches(config, tokenizer, *, process_index: int | None = None,
                                        process_count: int | None = None,
                                        records: list[dict[str, str]] | None = None
                                        ) -> list[dict[str, np.ndarray]]:
    """Every validation record of this process's share (records[index::count]) exactly once.

    Returns a list of batches (dicts of int32 [B, T] arrays, keys as in the module docstring),
    the same list on every call. Every process gets ceil(ceil(N / count) / B) batches, so
    multi-host evaluation stays in lockstep; rows past a process's records are padding rows
    (segment_ids and loss_mask all 0), so they add nothing to a loss or token count. Real rows
    are those with segment_ids[:, 0] == 1; each record is one row, counted once.
    """
    index, count, batch_size = pipeline.process_shard(config.train.global_batch_size,
                                                        process_index, process_count)
    if records is None:
        records = open_prompt_completion(config, hash_split.VALIDATION)
    if not records:
        raise ConfigError(
            f"config.data.validation_percent = {config.data.validation_percent}: no validation "
            f"records in {config.data.paths!r}; raise --config.data.validation_percent or add "
            "records")
    rows_per_process = pipeline.one_pass_rows(len(records), count, batch_size)
    encode = EncodePromptCompletion(tokenizer, config.model.seq_len)
    rows = [encode.map(record) for record in records[index::count]]
    rows += [padding_row(config.model.seq_len, tokenizer.pad_id)] * (rows_per_process - len(rows))
    return [{key: np.stack([row[key] for row in rows[start:start + batch_size]])
             for key in rows[0]}
            for start in range(0, rows_per_process, batch_size)]
