"""Tiny random Hugging Face models with real tokenizers, saved as local directories: the
reference side of parity tests and benchmarks (fmjax against transformers / lm-evaluation-
harness on the same files), with no download. Needs transformers and torch (the test extra).

Every weight is drawn N(0, 0.2) (norm scales 1 + N(0, 0.2)) so a misplaced tensor shows in the
logits. The tokenizers are trained here with the `tokenizers` library on a few standard-library
modules' source, as the real ones are built:
  gpt2   byte-level BPE, <|endoftext|> as bos = eos = unk, no post-processor (GPT-2's)
  llama  byte-level BPE whose post-processor starts every text with <|begin_of_text|> (Llama 3)
"""
from __future__ import annotations

import os
import sysconfig

STDLIB_MODULES = ("os.py", "textwrap.py", "json/decoder.py", "string.py", "random.py")
GPT2_SPECIALS = ("<|endoftext|>",)
LLAMA_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>")


def training_texts() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    texts = []
    for name in STDLIB_MODULES:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            texts.append(f.read())
    return texts


def byte_level_bpe(vocab_size: int, specials: tuple[str, ...], texts=None):
    """A `tokenizers.Tokenizer`: byte-level BPE with `specials` as its first ids."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts or training_texts(), trainer)
    return tok


def randomize(model, seed: int):
    """`model` (eval mode) with every weight N(0, 0.2), norm scales 1 + N(0, 0.2)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.2 * torch.randn(p.shape, generator=gen)
            is_norm = (p.ndim == 1 and ("ln_" in name or "norm" in name.lower())
                       and name.endswith("weight"))
            p.copy_(1 + noise if is_norm else noise)
    return model.eval()


def save_gpt2(directory: str, *, vocab_size: int = 512, n_layer: int = 2, n_embd: int = 64,
              n_head: int = 4, n_positions: int = 256, seed: int = 0) -> str:
    """A GPT2LMHeadModel + GPT2TokenizerFast directory; returns its path."""
    import torch
    import transformers
    tok = byte_level_bpe(vocab_size, GPT2_SPECIALS)
    eot = tok.token_to_id(GPT2_SPECIALS[0])
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=n_positions, n_embd=n_embd,
        n_layer=n_layer, n_head=n_head, bos_token_id=eot, eos_token_id=eot))
    randomize(model, seed).save_pretrained(directory)
    transformers.GPT2TokenizerFast(tokenizer_object=tok, bos_token=GPT2_SPECIALS[0],
                                   eos_token=GPT2_SPECIALS[0], unk_token=GPT2_SPECIALS[0]
                                   ).save_pretrained(directory)
    return directory


def save_llama(directory: str, *, vocab_size: int = 512, layers: int = 2, hidden: int = 64,
               heads: int = 4, kv_heads: int = 2, max_positions: int = 256, seed: int = 0) -> str:
    """A LlamaForCausalLM + a Llama-3-style fast tokenizer (bos added by its post-processor)."""
    import torch
    import transformers
    from tokenizers import processors
    tok = byte_level_bpe(vocab_size, LLAMA_SPECIALS)
    bos, eos = (tok.token_to_id(t) for t in LLAMA_SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{LLAMA_SPECIALS[0]} $A", pair=f"{LLAMA_SPECIALS[0]} $A $B:1",
        special_tokens=[(LLAMA_SPECIALS[0], bos)])
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, bos_token_id=bos, eos_token_id=eos))
    randomize(model, seed).save_pretrained(directory)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=LLAMA_SPECIALS[0],
                                         eos_token=LLAMA_SPECIALS[1]).save_pretrained(directory)
    return directory


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def save_bert(directory: str, *, vocab_size: int = 512, layers: int = 2, hidden: int = 64,
              heads: int = 4, max_positions: int = 128, seed: int = 0) -> str:
    """A BertForMaskedLM + BertTokenizerFast (WordPiece, [CLS] text [SEP]) directory."""
    import tokenizers
    import torch
    import transformers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(training_texts(), trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS), show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=2 * hidden,
        max_position_embeddings=max_positions, pad_token_id=tok.token_to_id("[PAD]")))
    randomize(model, seed).save_pretrained(directory)
    transformers.BertTokenizerFast(tokenizer_object=tok, **dict(zip(
        ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), BERT_SPECIALS))
    ).save_pretrained(directory)
    return directory
