"""Train or inspect a SentencePiece tokenizer.

  python -m fmjax.tokenizer train --input=corpus/*.txt,notes.jsonl --vocab_size=4096 \
      --output=/tmp/spm.model [--model_type=bpe]
  python -m fmjax.tokenizer encode --model=/tmp/spm.model --text='def f(x):'

--input takes comma-separated files, globs or directories (a directory means its .txt, .py,
.md, .rst and .jsonl files); .jsonl files hold one document per line under --text_field.
"""
import time

from absl import flags

from fmjax import cli
from fmjax.config import ConfigError
from fmjax.data import text_files
from fmjax.data import sp_tokenizer as tokenizer_lib

_INPUT = flags.DEFINE_string("input", "", "train: comma-separated files, globs or directories")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 4096, "train: pieces in the vocabulary")
_OUTPUT = flags.DEFINE_string("output", "", "train: path of the .model file to write")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "bpe", tokenizer_lib.MODEL_TYPES,
                                "train: SentencePiece algorithm")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "train: .jsonl key holding the text")
_TRAIN_CHARS = flags.DEFINE_integer("train_chars", 8_000_000,
                                    "train: use documents until this many characters")
_MODEL = flags.DEFINE_string("model", "", "encode: the .model file")
_TEXT = flags.DEFINE_string("text", "", "encode: text to encode")

def documents():
    for path in text_files.resolve_paths(_INPUT.value, flag="--input"):
        for _, text in text_files.iter_documents(path, text_field=_TEXT_FIELD.value,
                                                 text_field_flag="--text_field"):
            yield text


def train():
    if not _OUTPUT.value:
        raise cli.UsageError("train needs --output=PATH.model")
    start = time.perf_counter()
    path = tokenizer_lib.train_sentencepiece(
        tokenizer_lib.limit_chars(documents(), _TRAIN_CHARS.value),
        vocab_size=_VOCAB_SIZE.value, output_path=_OUTPUT.value, model_type=_MODEL_TYPE.value)
    tokenizer = tokenizer_lib.Tokenizer(path)
    print(f"wrote {path}: {tokenizer.vocab_size} pieces ({_MODEL_TYPE.value}) in "
          f"{time.perf_counter() - start:.1f}s")


def encode():
    if not _MODEL.value:
        raise cli.UsageError("encode needs --model=PATH.model")
    tokenizer = tokenizer_lib.Tokenizer(_MODEL.value)
    ids = tokenizer.encode(_TEXT.value)
    print(" ".join(map(str, ids)))
    print(" ".join(repr(tokenizer.piece(i)) for i in ids))


COMMANDS = {"train": train, "encode": encode}


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise cli.UsageError(f"give one command: {' | '.join(COMMANDS)} (got {argv[1:]})")
    try:
        COMMANDS[argv[1]]()
    except (ConfigError, FileNotFoundError) as e:
        raise cli.UsageError(str(e)) from None


if __name__ == "__main__":
    cli.run(main)
