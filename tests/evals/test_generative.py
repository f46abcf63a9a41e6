"""Generative tasks (lm-evaluation-harness's generate_until): the stop-string cut and
exact_match's normalisation as nq_open and triviaqa configure it; the registered prompts;
batched greedy decoding of prompts of different lengths equal to a torch argmax loop on tiny
random HF GPT-2 and T5 models (one prompt at a time, unpadded), cut at the stop string, ending
early once every row has stopped; a prefix-LM reads its prompt bidirectionally; BERT is refused
rolling and generative tasks by name."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmjax import evals
from fmjax.config import ConfigError
from fmjax.evals import generative, generative_decoding, multiple_choice, suite
from fmjax.generation import sampling
from tests.evals.test_rolling import CharTokenizer, engine_for

NQ = evals.get("nq_open").generation
TRIVIA = evals.get("triviaqa").generation


def test_cut_at_stop_and_strip():
    assert generative.cut_at_stop("Paris, France.\nQ: next", ("\n", ".", ",")) == "Paris"
    assert generative.cut_at_stop("a\n\nb", ("\n\n",)) == "a"
    assert generative.answer(" 1972 UTC\nQ:", NQ) == "1972 UTC"
    assert generative.answer("  no stop here ", generative.Generation(until=())) == "no stop here"


@pytest.mark.parametrize("generation,prediction,answers,hit", [
    (NQ, "The Eiffel Tower", ["eiffel tower"], 1.0),  # article, case
    (NQ, "an apple!", ["Apple"], 1.0),  # article, punctuation
    (NQ, "THE Beatles", ["Beatles"], 0.0),  # the regex runs before lower-casing: "THE " stays
    (NQ, "December 1972", ["14 December 1972 UTC", "December 1972"], 1.0),  # any answer
    (NQ, "1972", ["December 1972"], 0.0),
    (TRIVIA, "The Beatles", ["Beatles"], 0.0),  # triviaqa keeps articles
    (TRIVIA, "sunset blvd", ["Sunset Blvd."], 1.0),
    (generative.Generation(), "paris", ["Paris"], 0.0),  # no options: exact
])
def test_exact_match_normalisation(generation, prediction, answers, hit):
    assert generative.exact_match(prediction, answers, generation) == hit


def test_exact_match_equals_lm_eval_where_installed():
    metrics = pytest.importorskip("lm_eval.api.metrics")
    cases = [("The Eiffel Tower", "eiffel tower"), ("an apple!", "Apple"), ("THE Beatles",
             "Beatles"), ("A.B.C", "abc"), ("  x", "x"), ("Dec. 1972", "dec 1972")]
    for generation in (NQ, TRIVIA):
        kw = dict(ignore_case=generation.ignore_case,
                  ignore_punctuation=generation.ignore_punctuation,
                  regexes_to_ignore=list(generation.regexes_to_ignore) or None)
        for prediction, reference in cases:
            theirs = metrics.exact_match_hf_evaluate([prediction], [reference], **kw)
            assert generative.exact_match(prediction, [reference], generation) == \
                theirs["exact_match"], (prediction, reference)


def test_score_mean_and_stderr():
    questions = [evals.Question("q", ("a",)), evals.Question("q", ("b",))]
    s = generative.score(questions, [" a\nmore", "c"], generative.Generation())
    assert s.exact_match == 0.5 and s.predictions == ("a", "c")
    assert s.exact_match_stderr == pytest.approx(np.std([1, 0], ddof=1) / np.sqrt(2))


def test_registered_prompts_follow_the_harness():
    nq, trivia = evals.get("nq_open"), evals.get("triviaqa")
    q = nq.load("validation")[0]
    assert q.context == "Q: when was the last time anyone was on the moon?\nA:"
    assert q.answers == ("14 December 1972 UTC", "December 1972")
    prompt = multiple_choice.fewshot_contexts(nq, [q], 1, seed=3)[0]
    assert prompt.startswith("Answer these questions:\n\nQ: ") and prompt.endswith(q.context)
    shot = prompt[len("Answer these questions:\n\n"):-len(q.context)]
    assert shot.count("\nA: ") == 1 and shot.endswith("\n")  # one shot, its first answer
    t = trivia.load("validation")[0]
    assert t.context.startswith("Question: ") and t.context.endswith("?\nAnswer:")
    assert "Sunset Boulevard" in t.answers


def torch_greedy(hf, ids, steps, **kw):
    import torch
    ids = list(ids)
    out = []
    for _ in range(steps):
        with torch.no_grad():
            logits = hf(torch.tensor([ids]), **kw).logits[0, -1]
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    pytest.importorskip("torch")
    from tests.hf.test_convert_decoders import QUIET, hf_model
    from fmjax.hf import conversion
    root = tmp_path_factory.mktemp("gen")
    hf = hf_model("gpt2")
    hf.save_pretrained(str(root / "hf"))
    conversion.import_hf("gpt2", str(root / "hf"), str(root / "ckpt"), **QUIET)
    engine, params = engine_for(str(root / "ckpt"))
    return hf, engine, params


def test_batched_greedy_equals_torch_and_stops(gpt2):
    hf, engine, params = gpt2
    prompts = [[3, 17, 40, 2, 9, 60, 61], [5], [70, 71, 72]]  # left-padded to one width
    width = generative_decoding.width(7, 24)
    tokens = np.zeros((3, width), np.int32)
    segments = np.zeros((3, width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):], segments[i, width - len(p):] = p, 1
    never = np.zeros(96, bool)
    ours = np.asarray(sampling.greedy_until(engine.model, params, tokens, segments, never,
                                            max_new_tokens=8))
    theirs = [torch_greedy(hf, p, 8) for p in prompts]
    np.testing.assert_array_equal(ours, theirs)
    # a stop table hit by every row's first token ends the batch after one step
    first = np.zeros(96, bool)
    first[[t[0] for t in theirs]] = True
    early = np.asarray(sampling.greedy_until(engine.model, params, tokens, segments, first,
                                             max_new_tokens=8))
    assert list(early[:, 0]) == [t[0] for t in theirs] and not early[:, 1:].any()

    # through the task path: text cut before the stop string (a character the model writes)
    tokenizer = CharTokenizer()
    texts = ["Hello", "Q: a?\nA:", "xyz xyz xyz"]
    ids = [tokenizer.encode(t) for t in texts]
    want = [tokenizer.decode(torch_greedy(hf, i, 12)) for i in ids]
    stop = want[0][3]
    generate = generative_decoding.text_generator(engine, tokenizer, batch_rows=2)
    got, truncated = generate(params, texts, generative.Generation(until=(stop,),
                                                                  max_gen_toks=12))
    assert truncated == 0
    for g, w in zip(got, want):
        assert generative.answer(g, generative.Generation(until=(stop,))) == \
            w.split(stop)[0].strip()
    assert stop not in got[0][:-1] and got[0].endswith(stop)  # it ended at the stop token


def test_jsonl_generative_task_through_evaluate(gpt2, tmp_path):
    hf, engine, params = gpt2
    tokenizer = CharTokenizer()
    contexts = ["Q: 1?\nA:", "Q: 22?\nA:", "Q: 333?\nA:"]
    outs = [tokenizer.decode(torch_greedy(hf, tokenizer.encode(c), 16)) for c in contexts]
    answers = [o.split("\n")[0].strip() for o in outs]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"context": c, "answers": [a if i else "nope"]})
                              for i, (c, a) in enumerate(zip(contexts, answers))))
    name = f"jsonl:{path}"
    scores = suite.evaluate(engine, params, tokenizer, [name], batch_rows=2, progress=False)
    assert scores[name].predictions == tuple(answers)
    assert scores[name].exact_match == pytest.approx(2 / 3)
    results = suite.results_json(scores, num_fewshot=0, model="tiny", limit=0)
    assert results["results"][name]["exact_match,none"] == pytest.approx(2 / 3)
    assert results["configs"][name]["output_type"] == "generate_until"
    assert "exact_match" in suite.table(scores, 0)
    # the training loop's hook reports every kind's metrics by name
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"text": "Q: 1?"}))
    hook = suite.loop_hook(engine, tokenizer, types.SimpleNamespace(
        tasks=f"{name},jsonl:{text}", num_fewshot=0, limit=0))
    metrics = hook(0, types.SimpleNamespace(params=params), None)
    assert metrics[f"{name}/exact_match"] == pytest.approx(2 / 3)
    assert set(metrics) == {f"{name}/exact_match"} | {
        f"jsonl:{text}/{m}" for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}


def test_t5_batched_greedy_equals_torch(tmp_path):
    pytest.importorskip("torch")
    import torch
    from tests.hf.test_convert_decoders import QUIET
    from tests.hf.test_convert_encoders import T5_VOCAB, hf_model
    from fmjax.hf import conversion
    hf = hf_model("t5")
    hf.save_pretrained(str(tmp_path / "hf"))
    conversion.import_hf("t5", str(tmp_path / "hf"), str(tmp_path / "ckpt"), **QUIET)
    engine, params = engine_for(str(tmp_path / "ckpt"))
    prompts = [[5, 9, 14, 3, 1], [7, 1], [20, 21, 22, 1]]  # right-padded in the encoder
    width = generative_decoding.width(5, engine.model_config.seq_len)
    tokens = np.zeros((3, width), np.int32)
    segments = np.zeros((3, width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)], segments[i, :len(p)] = p, 1
    ours = np.asarray(sampling.generate_encoder_decoder(
        engine.model, params, tokens, jax.random.PRNGKey(0), max_new_tokens=6,
        encoder_segment_ids_BS=segments, stop_V=np.zeros(engine.model_config.vocab_size, bool)))
    for row, p in zip(ours, prompts):
        decoder = [0]
        for _ in range(6):
            with torch.no_grad():
                logits = hf(input_ids=torch.tensor([p]),
                            decoder_input_ids=torch.tensor([decoder])).logits[0, -1]
            decoder.append(int(logits[:T5_VOCAB].argmax()))
        assert list(row) == decoder[1:]


def test_prefix_lm_generation_reads_the_prompt_bidirectionally():
    from fmjax import models
    from tests.helpers import tiny_config
    config = tiny_config(init_std=0.5)
    model, cfg = models.build(config)
    params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 32), jnp.int32))["params"]
    prompts = [[4, 8, 15, 16, 23], [42, 7]]
    tokens = np.zeros((2, 16), np.int32)
    segments = np.zeros((2, 16), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, 16 - len(p):], segments[i, 16 - len(p):] = p, 1
    never = np.zeros(cfg.vocab_size, bool)
    ours = np.asarray(sampling.greedy_until(model, params, tokens, segments, never,
                                            max_new_tokens=5, prefix_lm=True))
    causal = np.asarray(sampling.greedy_until(model, params, tokens, segments, never,
                                              max_new_tokens=5))
    apply = jax.jit(lambda tokens, segments, prefix: model.apply(
        {"params": params}, tokens, segments, prefix_mask_BT=prefix))
    for row, p in zip(ours, prompts):  # reference: the whole sequence each step, no cache
        seq = list(p)
        for _ in range(5):  # one [1, 12] buffer: the real tokens first, then empty slots
            n = len(seq)
            logits = apply(jnp.asarray([seq + [0] * (12 - n)], jnp.int32),
                           jnp.asarray([[1] * n + [0] * (12 - n)], jnp.int32),
                           jnp.asarray([[1] * len(p) + [0] * (12 - len(p))], jnp.int32))
            seq.append(int(jnp.argmax(logits[0, n - 1])))
        assert list(row) == seq[len(p):]
    assert (ours != causal).any()  # the prefix mask is used


def test_bert_is_refused_rolling_and_generative_tasks(tmp_path):
    engine = types.SimpleNamespace(model_config=types.SimpleNamespace(family="bert"))
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"text": "some text"}))
    for name, kind in (("nq_open", "generate_until"), (f"jsonl:{path}", "loglikelihood_rolling"),
                       ("lambada_text", "loglikelihood_rolling")):
        with pytest.raises(ConfigError, match=f"eval task '{name}' is {kind}, which "
                                              "model.family = 'bert' \\(encoder\\) cannot"):
            suite.evaluate(engine, None, CharTokenizer(), ["copa", name], progress=False)
    suite.check_supported(engine, evals.get("copa"))  # multiple choice is fine
