"""The library API a serving process calls: load a checkpoint once, then generate texts (and
token ids) for batches of prompts.

    generator = Generator.load("runs/default")          # a run, a checkpoint step, an export
    out = generator.generate(["def fib(n):", "import"], max_new_tokens=64,
                             num_return_sequences=2, temperature=0.8, top_p=0.95,
                             stop=["\\n\\n"], seed=0)
    out[0][1].text, out[0][1].token_ids, out[0][1].finish_reason

Compiled shapes are bucketed so a serving loop does not recompile per request: rows (prompts x
return sequences, split into batches of at most `max_batch`) padded to a power of two, prompt
widths to a power of two (at least `min_width`), new-token budgets to a power of two (at least
`min_new_tokens`); the sampling settings, seed and per-row budgets are traced values
(decoding.py). One program per (batch, width, budget) bucket, compiled on first use.

A model family's kind picks its layout through KINDS (never a branch on family names):
decoders left-pad their prompts and continue them; encoder-decoders right-pad the encoder
input and write a new text from the start id.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from fmjax import models
from fmjax.generation import decoding, texts


class CannotGenerate(ValueError):
    """The model's family kind has no entry in KINDS (an encoder such as BERT)."""


class BadRequest(ValueError):
    """A generate() argument out of range, or a prompt the model cannot continue."""


@dataclasses.dataclass(frozen=True)
class Completion:
    """One generated sequence: its text (cut before the first stop string), its token ids
    (through the token that completed a stop string; eos and padding dropped) and why it
    ended: "stop" (eos or a stop string) or "length" (max_new_tokens, or the model's
    positions)."""
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


class DecoderKind:
    """Decoders (gpt2, llama): [prefix ids] + prompt, left-padded; the text continues it."""
    continues_prompt = True
    prompt_ids = staticmethod(texts.decoder_prompt_ids)

    @staticmethod
    def position_limit(model_config) -> int | None:
        """Learned positions end at model.max_positions; rotary ones do not end."""
        family = models.get_family(model_config.family)
        return model_config.max_positions if family.position_params(model_config) else None

    @staticmethod
    def pad(rows: Sequence[Sequence[int]], width: int):
        tokens, segments = np.zeros((2, len(rows), width), np.int32)
        for i, row in enumerate(rows):
            tokens[i, width - len(row):], segments[i, width - len(row):] = row, 1
        return tokens, segments

    @staticmethod
    def run(model, config, *args, new_tokens):
        return decoding.decoder_program(model, *args, new_tokens=new_tokens,
                                        prefix_lm=config.objective == "prefix_lm")

    @staticmethod
    def text(tokenizer, config, prompt_ids, new_ids) -> str:
        return texts.continuation_text(tokenizer, prompt_ids, new_ids)


class EncoderDecoderKind:
    """Encoder-decoders (t5, t5_1_1): [bos] + prompt + eos in the encoder, right-padded; the
    decoder writes from start id 0 (HF's decoder_start_token_id) to eos."""
    continues_prompt = False
    prompt_ids = staticmethod(texts.encoder_prompt_ids)

    @staticmethod
    def position_limit(model_config) -> int | None:
        return None  # relative positions

    @staticmethod
    def pad(rows: Sequence[Sequence[int]], width: int):
        tokens, segments = np.zeros((2, len(rows), width), np.int32)
        for i, row in enumerate(rows):
            tokens[i, :len(row)], segments[i, :len(row)] = row, 1
        return tokens, segments

    @staticmethod
    def run(model, config, *args, new_tokens):
        return decoding.encoder_decoder_program(model, *args, new_tokens=new_tokens,
                                                start_id=0, pad_id=0)

    @staticmethod
    def text(tokenizer, config, prompt_ids, new_ids) -> str:
        return texts.decode_with_sentinels(tokenizer, new_ids, config)


# model family kind -> layout; kinds absent here do not generate text
KINDS = {"decoder": DecoderKind, "encoder_decoder": EncoderDecoderKind}


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


def kind_of(model_config):
    family = models.get_family(model_config.family)
    if family.kind not in KINDS:
        raise CannotGenerate(f"model.family = {model_config.family!r} is an {family.kind} "
                             f"model, which does not generate text; generation needs a model "
                             f"of kind {' or '.join(KINDS)}")
    return KINDS[family.kind]


class Generator:
    """A loaded model that generates text; `load` once, `generate` per request."""

    def __init__(self, model, config, model_config, params, tokenizer, *, max_batch: int = 64,
                 min_width: int = 16, min_new_tokens: int = 16, device=None, step: int = -1):
        if max_batch < 1 or max_batch & (max_batch - 1):
            raise ValueError(f"max_batch = {max_batch}: use a power of two (rows per compiled "
                             "batch), e.g. 64")
        self.kind = kind_of(model_config)
        self.model, self.config, self.model_config = model, config, model_config
        self.tokenizer, self.step = tokenizer, step
        self.max_batch, self.min_width, self.min_new_tokens = max_batch, min_width, min_new_tokens
        # one device: the programs are not sharded (a replicated copy would run on every one)
        self.params = jax.device_put(jax.device_get(params), device or jax.local_devices()[0])
        self._stop_tables: dict[tuple, np.ndarray] = {}

    @classmethod
    def load(cls, source: str, step: int | None = None, tokenizer_path: str | None = None,
             **kw) -> "Generator":
        """A training run's latest (or `step`) checkpoint, a checkpoint directory or an export,
        with its own tokenizer (or `tokenizer_path`)."""
        from fmjax.generation import loading
        engine, params, tokenizer, step = loading.load_run(source, step, tokenizer_path)
        return cls.from_engine(engine, params, tokenizer, step=step, **kw)

    @classmethod
    def from_engine(cls, engine, params, tokenizer, **kw) -> "Generator":
        return cls(engine.model, engine.config, engine.model_config, params, tokenizer, **kw)

    @property
    def continues_prompt(self) -> bool:
        """True when a text continues its prompt (decoders), False when it is a new text."""
        return self.kind.continues_prompt

    def _stop_table(self, stop: tuple[str, ...], ignore_eos: bool) -> np.ndarray:
        if (stop, ignore_eos) not in self._stop_tables:
            if len(self._stop_tables) >= 64:
                self._stop_tables.clear()
            self._stop_tables[stop, ignore_eos] = texts.stop_table(
                self.tokenizer, self.model_config.vocab_size, stop, eos=not ignore_eos)
        return self._stop_tables[stop, ignore_eos]

    def _budgets(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[int]:
        """New tokens per prompt: max_new_tokens, fewer where learned positions end."""
        limit = self.kind.position_limit(self.model_config)
        if limit is None:
            return [max_new_tokens] * len(prompt_ids)
        for i, ids in enumerate(prompt_ids):
            if len(ids) >= limit:
                raise BadRequest(f"prompt {i} has {len(ids)} tokens, and model.max_positions = "
                                 f"{limit} leaves no room for a new one; shorten the prompt")
        return [min(max_new_tokens, limit - len(ids)) for ids in prompt_ids]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 128,
                 num_return_sequences: int = 1, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, stop: Sequence[str] = (), seed: int = 0,
                 ignore_eos: bool = False) -> list[list[Completion]]:
        """num_return_sequences Completions per prompt. temperature 0 = greedy; top_k 0 and
        top_p 1 = no filter. A sequence ends at eos (unless ignore_eos), after a token whose
        text holds a stop string, or after max_new_tokens; its text is cut before the first
        stop string (also one spread over several tokens). Sequence s of prompt i depends only
        on (seed, i, s): the same in any batch."""
        if isinstance(prompts, str):
            raise BadRequest("prompts is a list of strings; wrap one prompt as [prompt]")
        _check(max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
               temperature=temperature, top_k=top_k, top_p=top_p)
        stop = tuple(s for s in stop if s)
        prompt_ids = [list(self.kind.prompt_ids(self.tokenizer, p)) for p in prompts]
        budgets = self._budgets(prompt_ids, max_new_tokens)
        rows = [(i, s) for i in range(len(prompts)) for s in range(num_return_sequences)]
        table = self._stop_table(stop, ignore_eos)
        settings = decoding.Settings.make(temperature, top_k, top_p)
        new_ids: list[np.ndarray] = []
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            new_ids += self._run([prompt_ids[i] for i, _ in chunk],
                                 [budgets[i] for i, _ in chunk], chunk, settings, table, seed)
        out: list[list[Completion]] = [[] for _ in prompts]
        for (i, _), ids in zip(rows, new_ids):
            out[i].append(self._completion(prompt_ids[i], ids, budgets[i], table, stop))
        return out

    def _run(self, prompt_ids, budgets, rows, settings, table, seed) -> list[np.ndarray]:
        """New tokens of each row, one bucketed program call (dummy rows fill the batch)."""
        n = bucket(len(rows))
        filler = n - len(rows)
        width = bucket(max(len(p) for p in prompt_ids), self.min_width)
        new_tokens = bucket(max(budgets), self.min_new_tokens)
        dummy = [max(self.tokenizer.eos_id, 0)]  # one-token rows filling the batch
        tokens, segments = self.kind.pad(list(prompt_ids) + [dummy] * filler, width)
        rows_B2 = np.asarray(list(rows) + [(0, 0)] * filler, np.int32)
        max_new_B = np.asarray(list(budgets) + [1] * filler, np.int32)
        out = self.kind.run(self.model, self.config, self.params, tokens, segments,
                            jax.random.PRNGKey(seed), rows_B2, settings, table, max_new_B,
                            new_tokens=new_tokens)
        return list(np.asarray(out)[:len(rows)])

    def _completion(self, prompt_ids, row, budget, table, stop) -> Completion:
        ids = [int(t) for t in row[:budget]]
        end = next((j for j, t in enumerate(ids) if table[t]), None)
        reason = "length"
        if end is not None:
            reason = "stop"
            ids = ids[:end] if ids[end] == self.tokenizer.eos_id else ids[:end + 1]
        text = self.kind.text(self.tokenizer, self.config, prompt_ids, ids)
        text, found = texts.cut_at_stop(text, stop)
        if found:  # the ids through the token that completed the stop string
            reason = "stop"
            ids = next(ids[:j] for j in range(len(ids) + 1) if texts.cut_at_stop(
                self.kind.text(self.tokenizer, self.config, prompt_ids, ids[:j]), stop)[1])
        return Completion(text, tuple(ids), reason)


def _check(**values) -> None:
    """BadRequest naming the argument, its value and the accepted range."""
    rules = {"max_new_tokens": (lambda v: v >= 1, ">= 1"),
             "num_return_sequences": (lambda v: v >= 1, ">= 1"),
             "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"),
             "top_k": (lambda v: v >= 0, ">= 0 (0 = all tokens)"),
             "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 = all tokens)")}
    for name, value in values.items():
        ok, accepted = rules[name]
        if not ok(value):
            raise BadRequest(f"{name} = {value!r}: use a value {accepted}")
