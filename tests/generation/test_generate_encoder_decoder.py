"""fmjax's encoder-decoder generation (the KV-cached program of fmjax/generation/decoding.py
through sampling.generate_encoder_decoder, server.Generator and fmjax.generate) on tiny random
Hugging Face T5 v1.0 / v1.1 models imported with fmjax.hf: greedy decodes equal transformers'
`generate` token for token (early stop at eos and padding after it included; prompts of
different lengths in one right-padded batch), the sampling options behave, and the CLI prints
the text HF's tokens decode to."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from fmjax.generation import sampling  # noqa: E402
from tests.hf.test_convert_decoders import _cli  # noqa: E402
from tests.hf.test_convert_encoders import T5_PIECES, T5_VOCAB, hf_dirs, imported  # noqa: E402,F401

MAX_NEW = 8


def encoder_ids(seed, rows=3, length=10):
    """Random prompts without pad (0: HF's generate would mask it) or eos (1)."""
    return np.random.default_rng(seed).integers(3, T5_VOCAB, (rows, length))


def ours(model, params, encoder, *, eos_id=1, seed=0, **kw):
    return np.asarray(sampling.generate_encoder_decoder(
        model, params, jnp.asarray(encoder, jnp.int32), jax.random.PRNGKey(seed),
        max_new_tokens=MAX_NEW, eos_id=eos_id, **{"temperature": 0.0, **kw}))


def theirs(hf, encoder, **kw):
    """HF greedy new tokens (its start id dropped), padded with 0 to MAX_NEW when every row
    stopped early (HF pads finished rows with pad = 0 too). use_cache=False: transformers
    sizes T5's decoder cache by num_layers, and these models have more decoder layers."""
    with torch.no_grad():
        out = hf.generate(torch.tensor(encoder), max_new_tokens=MAX_NEW, do_sample=False,
                          use_cache=False, **kw).numpy()
    assert (out[:, 0] == 0).all()  # decoder start id
    return np.pad(out[:, 1:], ((0, 0), (0, MAX_NEW + 1 - out.shape[1])))


@pytest.mark.parametrize("case", ["t5", "t5_1_1"])
def test_greedy_generation_matches_transformers(hf_dirs, imported, case):  # noqa: F811
    _, _, model, params = imported(case)
    hf = hf_dirs[case][1]
    encoder = encoder_ids(11)
    greedy = ours(model, params, encoder)
    np.testing.assert_array_equal(greedy, theirs(hf, encoder))
    assert len(np.unique(greedy)) >= 4  # not one repeated token
    # eos = the token row 0 emits 4th: row 0 stops there (eos kept, pad after), others go on
    stop = int(greedy[0, 3])
    first = greedy[0].tolist().index(stop)
    assert stop != 0
    stopped = ours(model, params, encoder, eos_id=stop)
    np.testing.assert_array_equal(stopped, theirs(hf, encoder, eos_token_id=stop, pad_token_id=0))
    assert stopped[0, first] == stop and (stopped[0, first + 1:] == 0).all()
    np.testing.assert_array_equal(stopped[0, :first], greedy[0, :first])


def test_sampling_options(imported):  # noqa: F811
    """top_k = 1 at any temperature is greedy; a seed fixes the samples; rows of one prompt
    are sampled independently; another seed gives other samples."""
    _, _, model, params = imported("t5")
    encoder = np.repeat(encoder_ids(12, rows=1), 4, axis=0)
    greedy = ours(model, params, encoder, eos_id=-1)
    np.testing.assert_array_equal(
        ours(model, params, encoder, eos_id=-1, temperature=2.0, top_k=1, seed=3), greedy)
    sampled = ours(model, params, encoder, eos_id=-1, temperature=1.0, seed=0)
    np.testing.assert_array_equal(
        ours(model, params, encoder, eos_id=-1, temperature=1.0, seed=0), sampled)
    assert len({tuple(row) for row in sampled.tolist()}) > 1
    assert not np.array_equal(
        ours(model, params, encoder, eos_id=-1, temperature=1.0, seed=1), sampled)
    nucleus = ours(model, params, encoder, eos_id=-1, temperature=1.0, top_p=1e-6, seed=5)
    np.testing.assert_array_equal(nucleus, greedy)  # the nucleus is the top token alone


@pytest.mark.parametrize("case", ["t5", "t5_1_1"])
def test_generator_batches_prompts_of_different_lengths_as_transformers(hf_dirs, imported,  # noqa: F811
                                                                        case, tmp_path):
    """Generator (encoder run once, decoder self- and cross-attention cached): prompts of
    different lengths right-padded in one batch, each equal to HF's greedy `generate` on the
    prompt alone, cut before eos."""
    import shutil
    from fmjax.generation import server
    from fmjax.hf.conversion import import_hf
    from tests.hf.test_convert_decoders import QUIET
    directory, hf = hf_dirs[case]
    if case == "t5":
        ckpt = imported(case)[1]
    else:  # the t5_1_1 directory has no SentencePiece: a copy with the t5 one
        shutil.copytree(directory, tmp_path / "hf")
        shutil.copy(os.path.join(hf_dirs["t5"][0], "spiece.model"), tmp_path / "hf")
        ckpt = str(tmp_path / "ckpt")
        import_hf("t5_1_1", str(tmp_path / "hf"), ckpt, **QUIET)
    generator = server.Generator.load(ckpt, max_batch=4)
    prompts = ["def wrap(text, width=70):", "import os", "x"]
    rows = [generator.tokenizer.encode(p) + [1] for p in prompts]
    assert len({len(r) for r in rows}) == 3
    ours = generator.generate(prompts, max_new_tokens=MAX_NEW)
    for (completion,), row in zip(ours, rows):
        want = theirs(hf, np.asarray([row]))[0].tolist()
        want = want[:want.index(1)] if 1 in want else want
        assert list(completion.token_ids) == want
        assert completion.finish_reason == ("length" if len(want) == MAX_NEW else "stop")
    assert sum(len(c.token_ids) for (c,) in ours) >= 6


@pytest.mark.slow
def test_cli_generate_prints_transformers_greedy_text(hf_dirs, imported):  # noqa: F811
    """The encoder input is HF's T5 tokenizer's: the prompt's pieces + eos (no bos); the text
    is the decoder's output to its eos, extra ids (none are sentinels of HF's layout here:
    num_sentinels = 0 after an import, sentinel k = vocab - 1 - k) as <extra_id_k>."""
    import sentencepiece as spm
    _, ckpt, _, _ = imported("t5")
    directory, hf = hf_dirs["t5"]
    sp = spm.SentencePieceProcessor(model_file=os.path.join(directory, "spiece.model"))
    assert sp.bos_id() == -1 and sp.eos_id() == 1 and sp.get_piece_size() == T5_PIECES
    prompt = "def wrap(text, width=70"
    new = theirs(hf, np.asarray([sp.encode(prompt) + [sp.eos_id()]]))[0].tolist()
    new = new[:new.index(1)] if 1 in new else new
    assert len(new) >= 4
    text, run = "", []
    for token in new + [-1]:
        if 0 <= token < T5_PIECES:
            run.append(token)
            continue
        text += sp.decode(run) + (f"<extra_id_{T5_VOCAB - 1 - token}>" if token >= 0 else "")
        run = []
    out = _cli("fmjax.generate", f"--workdir={ckpt}", f"--prompt={prompt}", "--temperature=0",
               f"--max_new_tokens={MAX_NEW}")
    assert f"--- sample 0 (export) ---\n{text}\n" in out, (text, out)


def test_extra_ids_decode_as_sentinels(hf_dirs):  # noqa: F811
    """Ids past the pieces print as <extra_id_k> for sentinel k of config.span_corruption
    (num_sentinels = 0: vocab - 1 - k; else pieces + num_sentinels - 1 - k, HF's layout) and
    other extra ids (T5's padding rows) are dropped."""
    import sentencepiece as spm
    from fmjax.config import base_config
    sp = spm.SentencePieceProcessor(model_file=os.path.join(hf_dirs["t5"][0], "spiece.model"))
    config = base_config()
    config.model.vocab_size, config.tokenizer.extra_ids = T5_VOCAB, T5_VOCAB - T5_PIECES
    word = sp.encode("text")
    assert sp.decode(word) == "text"
    decode = functools.partial(sampling.decode_with_sentinels, sp, config=config)
    assert decode(word + [T5_VOCAB - 1] + word + [T5_VOCAB - 2]) == \
        "text<extra_id_0>text<extra_id_1>"
    config.span_corruption.num_sentinels = 20
    assert decode([T5_PIECES + 19, *word, T5_PIECES, T5_PIECES + 20, T5_VOCAB - 1]) == \
        "<extra_id_0>text<extra_id_19>"
