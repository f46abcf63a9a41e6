"""Data: sources (embedded stdlib corpus, local text, TFDS), mixtures, tokenizer, packing, grain.

  sources.get_source(config, split)            -> TextSource of {'text': str}
  tfds_text.NAMED                              -> how each named TFDS text dataset is read
  mixture.parse(config.data.mixture)           -> weighted components of a mixture
  tokenizer_files.ensure_tokenizer(config)     -> tokenizer (SentencePiece or tokenizer.json;
                                                  with no path, trained once and cached)
  pipeline.make_train_iterator(config, tok)    -> checkpointable grain iterator of batches
  pipeline.make_eval_batches(config, tok)      -> the same validation batches on every call
  pipeline.global_batch(local_batch, sharding) -> dict of global jax.Arrays

Submodules are imported explicitly (not here) so that light users such as the tokenizer CLI do
not pay for importing jax and grain.
"""
