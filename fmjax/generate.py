"""python -m fmjax.generate --workdir=DIR --prompt=TEXT [--max_new_tokens --temperature --top_k
--top_p --num_return_sequences (= --num_samples) --stop=S [--stop=S ...] --seed --step
--tokenizer]: samples from a run's latest (or given) checkpoint, or from an export (fmjax.export,
fmjax.convert import), with the run's own tokenizer, through sampling.sample_texts over
fmjax.generation.server.Generator (the library API a serving process uses). Decoders (gpt2,
llama) continue [bos] + prompt with a KV cache and print prompt + continuation;
encoder-decoders (t5, t5_1_1) encode [bos if any] + prompt + [eos] (HF's T5 tokenizer: prompt
+ eos) and print the decoder's output, decoded from start id 0 to eos with the encoder run
once and the decoder cached. A text ends at eos, before
the first --stop string, or after --max_new_tokens."""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by fmjax.train, or an export.")
flags.DEFINE_string("prompt", "", "Text to continue (decoders) or encode (encoder-decoders).")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate per sample.")
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 = greedy.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
flags.DEFINE_integer("num_samples", 1, "Independent samples of the prompt.")
flags.DEFINE_integer("num_return_sequences", None, "Same as --num_samples (Hugging Face's "
                     "name); wins when both are given.")
flags.DEFINE_multi_string("stop", [], "Stop string: a text is cut before the first one (repeat "
                          "the flag for several; a newline from bash: --stop=$'\\n').")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("tokenizer", None, "Tokenizer file (SentencePiece .model or HF tokenizer.json) "
                    "to use instead of the checkpoint's (needed when it stores none).")
flags.mark_flag_as_required("workdir")


def main(argv):
    cli.no_extra_args(argv)
    from fmjax.generation import sampling
    engine, params, tokenizer, step = cli.load_checkpoint(FLAGS.workdir, FLAGS.step,
                                                          FLAGS.tokenizer)
    try:
        texts = sampling.sample_texts(
            engine, params, tokenizer, FLAGS.prompt, max_new_tokens=FLAGS.max_new_tokens,
            temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
            num_samples=FLAGS.num_return_sequences or FLAGS.num_samples, seed=FLAGS.seed,
            stop=FLAGS.stop)
    except (sampling.CannotGenerate, sampling.BadRequest) as e:  # bert; a flag out of range
        cli.fail(str(e))
    for i, text in enumerate(texts):
        print(f"--- sample {i} ({f'step {step}' if step >= 0 else 'export'}) ---\n{text}")


if __name__ == "__main__":
    cli.run(main)
