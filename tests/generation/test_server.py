"""fmjax.generation.server.Generator on a tiny random Hugging Face GPT-2 with its real
tokenizer (fmjax/hf/tiny_models.py), imported with fmjax.hf: batched prompts of different
lengths (left-padded) decode exactly as each prompt alone and as transformers' `generate`;
several return sequences per prompt, seeded; top_k = 1 is greedy; stop strings cut the text;
a serving loop compiles once per bucket; the CLI's --num_return_sequences and --stop."""
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fmjax.generation import decoding, server  # noqa: E402

PROMPTS = ["def wrap(text, width=70):\n    return", "import", "class TextWrapper:\n    def"]
MAX_NEW = 10


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(HF directory, HF model, Generator, fmjax checkpoint) for a 2-layer GPT-2 with its
    byte-level BPE."""
    from fmjax.hf import conversion, tiny_models
    from tests.hf.test_convert_decoders import QUIET
    root = tmp_path_factory.mktemp("gpt2")
    hf_dir = tiny_models.save_gpt2(str(root / "hf"), vocab_size=384, n_layer=2, n_embd=64,
                                   n_positions=64)
    conversion.import_hf("gpt2", hf_dir, str(root / "ckpt"), **QUIET)
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    return hf_dir, hf, server.Generator.load(str(root / "ckpt"), max_batch=8), root / "ckpt"


def hf_greedy(hf_dir, hf, prompt, max_new=MAX_NEW):
    """transformers' greedy new ids for one unpadded prompt, cut before eos."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=max_new, do_sample=False,
                          pad_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
    return out[:out.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out


def ids_of(completions):
    return [[c.token_ids for c in per_prompt] for per_prompt in completions]


def test_left_padded_batch_equals_each_prompt_alone_and_transformers(gpt2):
    hf_dir, hf, generator, _ = gpt2
    lengths = [len(generator.tokenizer.encode(p)) for p in PROMPTS]
    assert len(set(lengths)) == len(PROMPTS)  # really different lengths: padding happens
    batched = generator.generate(PROMPTS, max_new_tokens=MAX_NEW)
    alone = [generator.generate([p], max_new_tokens=MAX_NEW)[0] for p in PROMPTS]
    assert ids_of(batched) == ids_of(alone)
    for prompt, (completion,) in zip(PROMPTS, batched):
        want = hf_greedy(hf_dir, hf, prompt)
        assert list(completion.token_ids) == want
        assert completion.text == generator.tokenizer.decode(want)
        assert completion.finish_reason == ("length" if len(want) == MAX_NEW else "stop")
    assert sum(len(c.token_ids) for (c,) in batched) >= 10  # not all stopped at once


def test_return_sequences_are_seeded_and_top_k_one_is_greedy(gpt2):
    _, _, generator, _ = gpt2
    kw = dict(max_new_tokens=8, num_return_sequences=3, temperature=1.5, ignore_eos=True)
    sampled = generator.generate(PROMPTS[:2], seed=7, **kw)
    assert [len(per_prompt) for per_prompt in sampled] == [3, 3]
    assert all(len(c.token_ids) == 8 and c.finish_reason == "length"
               for per_prompt in sampled for c in per_prompt)
    assert ids_of(generator.generate(PROMPTS[:2], seed=7, **kw)) == ids_of(sampled)
    assert len(set(ids_of(sampled)[0])) > 1  # the sequences of one prompt differ
    assert ids_of(generator.generate(PROMPTS[:2], seed=8, **kw)) != ids_of(sampled)
    # a prompt's samples depend on (seed, its index, sequence index), not on the batch
    assert ids_of(generator.generate(PROMPTS[:1], seed=7, **kw))[0] == ids_of(sampled)[0]
    greedy = ids_of(generator.generate(PROMPTS, max_new_tokens=8, ignore_eos=True))
    for filters in (dict(top_k=1), dict(top_p=1e-6)):
        picked = generator.generate(PROMPTS, max_new_tokens=8, temperature=2.0, seed=3,
                                    ignore_eos=True, **filters)
        assert ids_of(picked) == greedy, filters


def test_stop_strings_cut_the_text(gpt2):
    _, _, generator, _ = gpt2
    (full,), = generator.generate(PROMPTS[:1], max_new_tokens=16, ignore_eos=True)
    assert len(full.text) >= 8
    stop = full.text[4:7]  # ends the text where it first occurs (maybe inside a token)
    cut = full.text[:full.text.find(stop)]
    (stopped,), = generator.generate(PROMPTS[:1], max_new_tokens=16, ignore_eos=True,
                                     stop=["never in this text", stop])
    assert stopped.text == cut and stopped.finish_reason == "stop"
    ids = stopped.token_ids  # through the token that completed the stop string
    assert full.token_ids[:len(ids)] == ids
    assert stop in generator.tokenizer.decode(ids) and stop not in \
        generator.tokenizer.decode(ids[:-1])


def test_serving_loop_compiles_once_per_bucket(gpt2):
    """Requests differing in prompts, row counts, budgets and every sampling setting, all in
    one (batch 4, width 32, budget 32) bucket: one trace; a bigger batch bucket: one more.
    (min_new_tokens=32: a budget bucket the other tests do not compile.)"""
    loaded = gpt2[2]
    generator = server.Generator(loaded.model, loaded.config, loaded.model_config, loaded.params,
                                 loaded.tokenizer, max_batch=8, min_new_tokens=32)
    requests = [dict(prompts=PROMPTS, max_new_tokens=5),
                dict(prompts=[PROMPTS[2], PROMPTS[0]], max_new_tokens=12,
                     num_return_sequences=2, temperature=0.7, top_k=5, top_p=0.9, seed=3,
                     stop=["\n"]),
                dict(prompts=["x = 1", "y", PROMPTS[0] + " x"], max_new_tokens=16,
                     temperature=1.0, seed=4)]
    for request in requests:  # the longest prompt of each: 17 to 32 tokens, width 32
        assert 16 < max(len(generator.tokenizer.encode(p)) for p in request["prompts"]) <= 32
    before = decoding.TRACES["decoder"]
    generator.generate(**requests[0])
    assert decoding.TRACES["decoder"] == before + 1
    compiled = decoding.decoder_program._cache_size()
    for request in requests * 2:
        generator.generate(**request)
    assert decoding.TRACES["decoder"] == before + 1
    assert decoding.decoder_program._cache_size() == compiled
    generator.generate(PROMPTS * 2, max_new_tokens=5)  # 6 rows: the batch-8 bucket
    assert decoding.TRACES["decoder"] == before + 2


def test_requests_out_of_range_name_the_argument(gpt2):
    _, _, generator, _ = gpt2
    for kw, name in ((dict(max_new_tokens=0), "max_new_tokens = 0"),
                     (dict(top_p=0.0), "top_p = 0.0"),
                     (dict(num_return_sequences=0), "num_return_sequences = 0")):
        with pytest.raises(server.BadRequest, match=name):
            generator.generate(PROMPTS, **kw)
    with pytest.raises(server.BadRequest, match="model.max_positions = 64"):
        generator.generate(["word " * 80])
    # learned positions end at 64: a long prompt gets the tokens that still fit
    prompt = ""
    while len(generator.tokenizer.encode(prompt + " return")) < 58:
        prompt += " return"
    room = 64 - len(generator.tokenizer.encode(prompt))
    assert 0 < room < 10
    (c,), = generator.generate([prompt], max_new_tokens=10, ignore_eos=True)
    assert len(c.token_ids) == room and c.finish_reason == "length"


def test_cli_prints_each_sequence_cut_at_the_stop_string(gpt2):
    from tests.hf.test_convert_decoders import _cli
    _, _, generator, ckpt = gpt2
    (full,), = generator.generate(PROMPTS[1:2], max_new_tokens=12)
    assert len(full.text) >= 5
    stop = full.text[3:5]
    out = _cli("fmjax.generate", f"--workdir={ckpt}", f"--prompt={PROMPTS[1]}",
               "--temperature=0", "--max_new_tokens=12", "--num_return_sequences=2",
               f"--stop={stop}")
    text = PROMPTS[1] + full.text[:full.text.find(stop)]
    for i in range(2):
        assert f"--- sample {i} (export) ---\n{text}\n" in out, out
