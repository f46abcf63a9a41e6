"""Weight pruning: one-shot (`python -m fmjax.prune`, fmjax/pruning/one_shot.py) and gradual
during fine-tuning (config.prune, fmjax/pruning/hook.py).

What is pruned (targets.py): the `kernel` of every Dense layer inside the transformer blocks
(attention query/key/value/out, MLP up/gate/down). Embeddings, norms, biases, position and
relative-bias tables, the LM head, BERT's pooler and MLM head and a classifier's head stay
dense (the usual choice of Wanda and SparseGPT: the output layers are small and sensitive).

How (masks.py): each weight gets a score from a registered method (methods/: `magnitude`
|w|, `random`); the lowest-scoring are zeroed, per matrix (a scanned stack's layers are
separate matrices):
  * unstructured: exactly round(sparsity * size) weights of each matrix;
  * N:M (2:4): in every group of M consecutive weights along the contraction axis (the
    kernel's input dims, flattened), exactly M - N; the pattern sparse tensor cores run.
Ties go to the lower flat index, so masks are a pure function of the weights.

When (schedule.py): the cubic ramp of Zhu & Gupta 2017 (arXiv:1710.01878), recomputed every
`prune.frequency` steps from `prune.start_step` to `prune.end_step`. Masks only grow: a weight
once pruned stays pruned (it scores below every live weight).
"""
