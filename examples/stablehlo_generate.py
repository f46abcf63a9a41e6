"""Greedy generation from an fmjax StableHLO artifact (`python -m fmjax.export
--format=stablehlo`) with jax, numpy and the tokenizer's own library only: no fmjax, no flax.

    pip install jax flatbuffers numpy sentencepiece   # or `tokenizers` for a tokenizer.json
    python examples/stablehlo_generate.py ARTIFACT --prompt "def fib(n):" --prompt "import" \
        [--max_new_tokens 32] [--batch_size 8] [--json]

Prints each prompt's text (a decoder's prompt + continuation, an encoder-decoder's output);
with --json, one line per prompt: {"prompt", "token_ids", "text", "finish_reason"}.

The contract it follows (fmjax/generation/stablehlo_export.py; docs/deployment.md):
  ids      manifest.prompt.prefix_ids + tokenizer(prompt) + suffix_ids, or empty_ids if empty
  batch    rows padded on manifest.prompt.padding's side to width P >= min_width, with
           segment ids 1 on tokens and 0 on padding
  prefill  (W, tokens_BP, segment_ids_BP) -> (logits_BV, C)   the first new token's logits
  decode   (W, C, token_B) -> (logits_BV, C)                   the next token's logits
  room     new tokens <= max_length - P (the cache holds the prompt) or max_length
A row stops after eos (not returned) or after --max_new_tokens tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np
from jax import export

SPACE_MARK = "\u2581"  # SentencePiece's in-piece space; a literal one is fed as its bytes


class Tokenizer:
    """The artifact's tokenizer: a SentencePiece model or a Hugging Face tokenizer.json,
    encoding without special tokens (the manifest says which ids go around a prompt)."""

    def __init__(self, path: str, kind: str):
        self.kind = kind
        if kind == "sentencepiece":
            import sentencepiece
            self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
            self._mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>")
                              for b in SPACE_MARK.encode("utf-8")]
            self.size = self._sp.get_piece_size()
        elif kind == "hf_tokenizers":
            import tokenizers
            self._tok = tokenizers.Tokenizer.from_file(path)
            self.size = self._tok.get_vocab_size(with_added_tokens=True)
        else:
            raise SystemExit(f"error: manifest tokenizer.kind = {kind!r}: this reader knows "
                             "sentencepiece and hf_tokenizers")

    def encode(self, text: str) -> list[int]:
        if self.kind == "hf_tokenizers":
            return self._tok.encode(text, add_special_tokens=False).ids
        # the same pieces fmjax's SentencePiece wrapper gives: a literal '▁' as its 3 bytes
        ids: list[int] = []
        for i, part in enumerate(text.split(SPACE_MARK)):
            ids += (self._mark_ids if i else []) + self._sp.encode(part)
        return ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= i < self.size]
        if self.kind == "hf_tokenizers":
            return self._tok.decode(ids, skip_special_tokens=True)
        return self._sp.decode(ids)


class Artifact:
    """An artifact directory loaded once: weights on the default device, prefill and decode
    deserialized and jitted (one compile per batch/prompt shape)."""

    def __init__(self, directory: str):
        with open(os.path.join(directory, "manifest.json")) as f:
            self.manifest = m = json.load(f)
        if m.get("format") != "fmjax-stablehlo" or m.get("version") != 1:
            raise SystemExit(f"error: {directory}: not an fmjax-stablehlo version 1 artifact")
        with np.load(os.path.join(directory, m["weights"]["file"]), allow_pickle=False) as npz:
            self.weights = jax.device_put({name: npz[name] for name in npz.files})
        self.functions = {}
        for name, spec in m["functions"].items():
            with open(os.path.join(directory, spec["file"]), "rb") as f:
                call = export.deserialize(bytearray(f.read())).call
                # decode: the old cache is dead once the new one exists; donating it lets XLA
                # update the keys/values in place instead of copying them every step
                self.functions[name] = jax.jit(call, donate_argnums=(1,) if name == "decode" else ())
        self.tokenizer = Tokenizer(os.path.join(directory, m["tokenizer"]["file"]),
                                   m["tokenizer"]["kind"])

    def prompt_ids(self, text: str) -> list[int]:
        p = self.manifest["prompt"]
        ids = [*p["prefix_ids"], *self.tokenizer.encode(text), *p["suffix_ids"]]
        return ids or list(p["empty_ids"])

    def pad(self, rows: list[list[int]]):
        """(tokens_BP, segment_ids_BP) int32, rows padded to one width."""
        p = self.manifest["prompt"]
        width = max(p["min_width"], max(len(r) for r in rows))
        tokens = np.full((len(rows), width), p["pad_id"], np.int32)
        segments = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if p["padding"] == "left" else slice(0, len(row))
            tokens[i, cols], segments[i, cols] = row, 1
        return tokens, segments

    def greedy(self, rows: list[list[int]], max_new_tokens: int):
        """[(new ids, finish reason)] per row: argmax each step, a row ends after eos."""
        m = self.manifest
        tokens, segments = self.pad(rows)
        room = m["max_length"] - (tokens.shape[1] if m["prompt"]["cache_holds_prompt"] else 0)
        if room < 1:
            raise SystemExit(f"error: a prompt of {tokens.shape[1]} tokens leaves no room in "
                             f"the artifact's cache (max_length {m['max_length']}); shorten "
                             "it or export with a larger --max_length")
        steps = min(max_new_tokens, room)
        eos = m["tokenizer"]["eos_id"]
        logits_BV, cache = self.functions["prefill"](self.weights, tokens, segments)
        new = [[] for _ in rows]
        done = np.zeros(len(rows), bool)
        for i in range(steps):
            token_B = np.asarray(logits_BV).argmax(axis=-1).astype(np.int32)
            for b, t in enumerate(token_B):
                if not done[b]:
                    done[b] = t == eos
                    if not done[b]:
                        new[b].append(int(t))
            if done.all() or i == steps - 1:
                break
            logits_BV, cache = self.functions["decode"](self.weights, cache, token_B)
        return [(ids, "stop" if stopped else "length") for ids, stopped in zip(new, done)]

    def text(self, prompt_ids: list[int], new_ids: list[int]) -> str:
        """A decoder's continuation (the prompt's text cut off the joint text, so a piece that
        starts with a space keeps it), or an encoder-decoder's new text."""
        if not self.manifest["prompt"]["continues_prompt"]:
            return self.tokenizer.decode(new_ids)
        head = self.tokenizer.decode(prompt_ids)
        full = self.tokenizer.decode([*prompt_ids, *new_ids])
        return full[len(head):] if full.startswith(head) else self.tokenizer.decode(new_ids)


def generate(artifact: Artifact, prompts: list[str], max_new_tokens: int, batch_size: int):
    """[{"prompt", "token_ids", "text", "finish_reason"}] in prompt order."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        rows = [artifact.prompt_ids(p) for p in chunk]
        for prompt, ids, (new, reason) in zip(chunk, rows, artifact.greedy(rows, max_new_tokens)):
            out.append({"prompt": prompt, "token_ids": new, "finish_reason": reason,
                        "text": artifact.text(ids, new)})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", help="directory written by fmjax.export --format=stablehlo")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per call")
    parser.add_argument("--json", action="store_true", help="one JSON line per prompt")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("--max_new_tokens and --batch_size must be >= 1")
    artifact = Artifact(args.artifact)
    continues = artifact.manifest["prompt"]["continues_prompt"]
    for row in generate(artifact, args.prompt, args.max_new_tokens, args.batch_size):
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"--- {row['finish_reason']} ---\n"
                  f"{(row['prompt'] if continues else '') + row['text']}")


if __name__ == "__main__":
    sys.exit(main())
