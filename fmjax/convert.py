"""Hugging Face checkpoints in and out (local directories only; nothing is downloaded).

  python -m fmjax.convert import --family=FAMILY --hf_dir=DIR --output=CKPT \\
      [--noscan_layers] [--param_dtype=auto|float32|bfloat16|float16]
  python -m fmjax.convert export --family=FAMILY --workdir_or_checkpoint=SRC \\
      --output=HF_DIR [--dtype=auto|float32|bfloat16|float16] [--max_shard_mb=5120]

FAMILY (a module in fmjax/hf/): gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM), bert
(BertForMaskedLM; also BertForPreTraining and BertModel directories), t5 (T5 v1.0:
T5ForConditionalGeneration, feed_forward_proj relu), t5_1_1 (T5 v1.1: gated-gelu).

import reads DIR/config.json and DIR/model.safetensors (or its shards and index) into a
params-only checkpoint, the format of fmjax.export, with the matching fmjax config:
`python -m fmjax.finetune --config.init_from=CKPT` and `python -m fmjax.generate --workdir=CKPT`
read it. A SentencePiece DIR/tokenizer.model (Llama) or DIR/spiece.model (T5; rows past its
pieces become config.tokenizer.extra_ids) is kept as the checkpoint's tokenizer; GPT-2's BPE
and BERT's WordPiece files are not, so pass --config.tokenizer.path (finetune) or --tokenizer
(generate). Params a directory lacks (BertForMaskedLM's pooler, BertModel's MLM head) are
initialised as transformers does and named in the output. export writes config.json +
model.safetensors that transformers' from_pretrained loads. Both stream one tensor at a time
(fmjax/hf/).
"""
from absl import flags

from fmjax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("family", None, "Model family: gpt2 | llama | mixtral | bert | t5 | "
                    "t5_1_1 | switch (a module in fmjax/hf/).")
flags.DEFINE_string("hf_dir", None, "import: local Hugging Face model directory.")
flags.DEFINE_string("workdir_or_checkpoint", None,
                    "export: fmjax run directory, one of its checkpoints/STEP, or an export.")
flags.DEFINE_string("output", None, "Directory to write (must not exist).")
flags.DEFINE_bool("scan_layers", True, "import: stack the blocks on a leading axis "
                  "(config.model.scan_layers), as fmjax trains by default.")
flags.DEFINE_string("param_dtype", "auto", "import: parameter dtype; auto = the checkpoint's.")
flags.DEFINE_string("dtype", "auto", "export: tensor dtype; auto = the checkpoint's.")
flags.DEFINE_integer("max_shard_mb", 5120, "export: largest safetensors shard (MiB).")
flags.mark_flags_as_required(["family", "output"])


def run_import():
    from fmjax import models
    from fmjax.hf import conversion
    if not FLAGS.hf_dir:
        cli.fail("import needs --hf_dir=DIR")
    result = conversion.import_hf(FLAGS.family, FLAGS.hf_dir, FLAGS.output,
                                  scan_layers=FLAGS.scan_layers, param_dtype=FLAGS.param_dtype)
    m = result.config.model
    layers = f"{m.n_layers}"
    if models.get_family(m.family).kind == "encoder_decoder":
        layers += f" + {m.n_decoder_layers or m.n_layers}"
    fresh = f"; initialised: {', '.join(result.fresh)}" if result.fresh else ""
    print(f"imported {FLAGS.hf_dir} -> {result.path}: {m.family}, {result.num_params:,} "
          f"parameters ({m.param_dtype}), {layers} layers, d_model {m.d_model}, vocab "
          f"{m.vocab_size}; tokenizer: {'kept' if result.has_tokenizer else 'none'}{fresh}")


def run_export():
    from fmjax.hf import conversion
    if not FLAGS.workdir_or_checkpoint:
        cli.fail("export needs --workdir_or_checkpoint=SRC")
    conversion.export_hf(FLAGS.family, FLAGS.workdir_or_checkpoint, FLAGS.output,
                         dtype=FLAGS.dtype, max_shard_bytes=FLAGS.max_shard_mb * 2**20)


COMMANDS = {"import": run_import, "export": run_export}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        cli.fail(f"give one command: {' | '.join(COMMANDS)} (got {argv[1:]})")
    from fmjax.config import ConfigError
    from fmjax.hf.mapping import MappingError
    from fmjax.hf.safetensors_io import HFFormatError
    try:
        COMMANDS[argv[1]]()
    except (ConfigError, MappingError, HFFormatError, FileExistsError, FileNotFoundError) as e:
        cli.fail(str(e))


if __name__ == "__main__":
    cli.run(main)
