"""Sequence classification: the model maps a row to class logits [B, C]; the target is the
row's label, weighted by the row's weight (0 for padding rows)."""
from fmjax import objectives


class Classification:
    def transform(self, batch, rng=None):
        inputs = {"tokens_BT": batch["tokens"], "segment_ids_BT": batch["segment_ids"],
                  "positions_BT": batch["positions"]}
        if "token_types" in batch:  # sentence pairs: 0 on text A, 1 on text B
            inputs["token_types_BT"] = batch["token_types"]
        return {"inputs": inputs, "targets": batch["labels"], "weights": batch["weights"]}


@objectives.register("classification")
def make(config):
    return Classification()
