"""python -m fmjax.generate --workdir=DIR --prompt=TEXT [--max_new_tokens --temperature --top_k
--top_p --num_samples --seed --step --tokenizer]: samples from a run's latest (or given)
checkpoint, or from an export (fmjax.export, fmjax.convert import), with the run's own tokenizer.
Decoders (gpt2, llama) continue [bos] + prompt with a KV cache and print prompt + continuation;
encoder-decoders (t5, t5_1_1) encode [bos if any] + prompt + [eos] (HF's T5 tokenizer: prompt +
eos) and print the decoder's output, decoded from start id 0 to eos (fmjax/sampling.py)."""
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
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_string("tokenizer", None, "SentencePiece .model to use instead of the checkpoint's "
                    "(needed when it stores none, e.g. a GPT-2 converted from Hugging Face).")
flags.mark_flag_as_required("workdir")


def _tokenizer_file(workdir: str, tokenizer_bytes: bytes) -> str:
    """The run's own tokenizer file, or the checkpoint's tokenizer (an export) in a temporary
    file removed at exit."""
    import atexit
    import os
    import tempfile
    from fmjax import checkpoint
    if os.path.isfile(checkpoint.tokenizer_path(workdir)):
        return checkpoint.tokenizer_path(workdir)
    if not tokenizer_bytes:
        raise SystemExit(f"error: {workdir} stores no tokenizer (a checkpoint converted from a "
                         "Hugging Face model whose tokenizer is not SentencePiece); pass "
                         "--tokenizer=PATH.model")
    with tempfile.NamedTemporaryFile(suffix=".model", delete=False) as f:
        f.write(tokenizer_bytes)
    atexit.register(os.remove, f.name)
    return f.name


class _NoObjective:
    """Generation never trains: the engine gets this stand-in instead of config.objective, so a
    checkpoint whose objective does not suit its family (an import keeps the default causal_lm,
    also for t5) or cannot be built (span corruption without sentinel ids) still samples. The
    engine's train/eval steps are never called (jax.jit traces them lazily)."""


def load_run(workdir: str, step: int | None = None, tokenizer_path: str | None = None):
    """(engine, params, tokenizer, step) of a training run's checkpoint or of an export (params
    only, verified against its checksums; step -1 for an export), on all local devices."""
    import os
    from fmjax import checkpoint, config as config_lib, engine as engine_lib, mesh as mesh_lib
    from fmjax.data import tokenizer as tokenizer_lib
    source = workdir if step is None else os.path.join(checkpoint.checkpoint_dir(workdir), str(step))
    directory, _ = checkpoint.resolve_params_source(source)
    config_dict, tokenizer_bytes = checkpoint.read_source(directory)
    config = config_lib.from_json_dict(config_dict)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    config.tokenizer.path = tokenizer_path or _tokenizer_file(workdir, tokenizer_bytes)
    tokenizer = tokenizer_lib.ensure_tokenizer(config)
    engine = engine_lib.build(config, mesh_lib.make_mesh(config), objective=_NoObjective())
    params, _, _ = checkpoint.load_params(directory, engine.abstract_state.params,
                                          engine.shardings.params)
    name = os.path.basename(directory.rstrip("/"))
    return engine, params, tokenizer, int(name) if name.isdigit() else -1


def main(argv):
    cli.no_extra_args(argv)
    engine, params, tokenizer, step = load_run(FLAGS.workdir, FLAGS.step, FLAGS.tokenizer)
    from fmjax import sampling
    try:
        texts = sampling.sample_texts(engine, params, tokenizer, FLAGS.prompt,
                                      max_new_tokens=FLAGS.max_new_tokens,
                                      temperature=FLAGS.temperature, top_k=FLAGS.top_k,
                                      top_p=FLAGS.top_p, num_samples=FLAGS.num_samples,
                                      seed=FLAGS.seed)
    except sampling.CannotGenerate as e:  # an encoder-only family (bert)
        raise SystemExit(f"error: {e}") from None
    for i, text in enumerate(texts):
        print(f"--- sample {i} ({f'step {step}' if step >= 0 else 'export'}) ---\n{text}")


if __name__ == "__main__":
    cli.run(main)
