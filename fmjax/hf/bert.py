"""BERT <-> transformers' BertForMaskedLM (config.json model_type "bert").

Names: bert.embeddings.{word,position,token_type}_embeddings + LayerNorm, bert.encoder.layer.{i}.
{attention.self.{query,key,value}, attention.output.{dense,LayerNorm}, intermediate.dense,
output.{dense,LayerNorm}} (torch.nn.Linear [out, in]), bert.pooler.dense, and the MLM head
cls.predictions.{transform.dense, transform.LayerNorm, bias} whose decoder is the word
embedding (tied; cls.predictions.decoder.weight/.bias, when stored, must equal the embedding
and cls.predictions.bias).

Which directories import:
  BertForMaskedLM (what save_pretrained writes): no pooler -> fmjax's pooler is initialised
    (N(0, initializer_range), zero bias, as transformers does when BertModel or
    BertForSequenceClassification loads such a checkpoint); MLM logits are exact.
  BertForPreTraining / the hub's original checkpoints (bert-base-uncased): pooler kept, the
    next-sentence head cls.seq_relationship dropped (fmjax has none).
  BertModel (no `bert.` prefix, no cls.*): the MLM head is initialised (dense N(0,
    initializer_range), LayerNorm 1/0, bias 0): encoder, pooler and fine-tuning are exact, MLM
    logits are meaningless until the head is trained. Import says which groups it initialised.
Export writes all of it (architectures ["BertForMaskedLM"], as the hub's bert-base-uncased:
BertForMaskedLM.from_pretrained ignores the pooler, BertModel / BertForSequenceClassification
use it).

Refused: position_embedding_type other than absolute, is_decoder / add_cross_attention, a
hidden_act other than exact GELU, untied MLM decoder. BERT's WordPiece vocab.txt is not a
SentencePiece model, so the checkpoint stores no tokenizer.
"""
from fmjax.hf import mapping
from fmjax.hf.mapping import Fresh, Stack, linear, matrix, vector

FAMILY = "bert"


def config_from_hf(hf: dict) -> dict:
    mapping.require(hf, FAMILY, "position_embedding_type", ("absolute",),
                    "fmjax's BERT has learned absolute positions only", default="absolute")
    mapping.require(hf, FAMILY, "is_decoder", (False,),
                    "fmjax's BERT is a bidirectional encoder", default=False)
    mapping.require(hf, FAMILY, "add_cross_attention", (False,),
                    "fmjax's BERT has no cross-attention", default=False)
    mapping.require(hf, FAMILY, "hidden_act", ("gelu",),
                    "fmjax's BERT MLP and MLM head use exact (erf) GELU", default="gelu")
    mapping.require(hf, FAMILY, "tie_word_embeddings", (True,),
                    "fmjax's MLM head predicts with the word embedding table", default=True)
    positions = hf.get("max_position_embeddings", 512)
    return {"vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"],
            "n_layers": hf["num_hidden_layers"], "n_heads": hf["num_attention_heads"],
            "n_kv_heads": 0, "head_dim": 0, "d_ff": hf["intermediate_size"],
            "max_positions": positions, "seq_len": positions,
            "type_vocab_size": hf.get("type_vocab_size", 2),
            "norm_eps": hf.get("layer_norm_eps", 1e-12), "tie_embeddings": True,
            "init_std": hf.get("initializer_range", 0.02)}


def config_to_hf(cfg) -> dict:
    mapping.require_plain_heads(cfg, "BERT")
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff, "hidden_act": "gelu",
            "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
            "layer_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std,
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
            "position_embedding_type": "absolute", "is_decoder": False,
            "add_cross_attention": False, "tie_word_embeddings": True}


def links(cfg) -> list:
    block = Stack(cfg.n_layers)
    emb, layer = "bert.embeddings.", "bert.encoder.layer.{i}."
    out = [matrix("embed/embedding", emb + "word_embeddings.weight", vocab_axis=0),
           matrix("pos_embed/embedding", emb + "position_embeddings.weight"),
           matrix("type_embed/embedding", emb + "token_type_embeddings.weight"),
           vector("embed_norm/scale", emb + "LayerNorm.weight"),
           vector("embed_norm/bias", emb + "LayerNorm.bias")]
    for proj in ("query", "key", "value"):
        out += [linear(f"attn/{proj}/kernel", layer + f"attention.self.{proj}.weight",
                       stack=block),
                vector(f"attn/{proj}/bias", layer + f"attention.self.{proj}.bias", stack=block)]
    for fm, hf, n_in in (("attn/out", "attention.output.dense", 2),
                         ("mlp/up", "intermediate.dense", 1), ("mlp/down", "output.dense", 1)):
        out += [linear(f"{fm}/kernel", layer + f"{hf}.weight", n_in=n_in, stack=block),
                vector(f"{fm}/bias", layer + f"{hf}.bias", stack=block)]
    for fm, hf in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
        out += [vector(f"{fm}/scale", layer + f"{hf}.weight", stack=block),
                vector(f"{fm}/bias", layer + f"{hf}.bias", stack=block)]
    pooler, head = Fresh("pooler", "normal"), "cls.predictions."
    out += [linear("pooler/kernel", "bert.pooler.dense.weight", fresh=pooler),
            vector("pooler/bias", "bert.pooler.dense.bias", fresh=Fresh("pooler", "zeros")),
            linear("mlm_head/transform/kernel", head + "transform.dense.weight",
                   fresh=Fresh("mlm_head", "normal")),
            vector("mlm_head/transform/bias", head + "transform.dense.bias",
                   fresh=Fresh("mlm_head", "zeros")),
            vector("mlm_head/norm/scale", head + "transform.LayerNorm.weight",
                   fresh=Fresh("mlm_head", "ones")),
            vector("mlm_head/norm/bias", head + "transform.LayerNorm.bias",
                   fresh=Fresh("mlm_head", "zeros")),
            vector("mlm_head/bias", head + "bias", vocab_axis=0,
                   fresh=Fresh("mlm_head", "zeros"))]
    return out


def ignored(cfg) -> tuple:
    # the next-sentence head of BertForPreTraining; position / token-type id buffers
    return (r"^cls\.seq_relationship\.", r"(^|\.)embeddings\.(position|token_type)_ids$")


mapping.register(mapping.Converter(
    family=FAMILY, model_types=("bert",), config_from_hf=config_from_hf,
    config_to_hf=config_to_hf, links=links, ignored=ignored, base_prefix="bert.",
    # transformers < 5 saved the MLM bias (also) as the decoder's
    aliases=lambda cfg: {"cls.predictions.bias": ("cls.predictions.decoder.bias",)},
    copies=lambda cfg: {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                        "cls.predictions.decoder.bias": "cls.predictions.bias"}))
