"""What names the data a run reads, compared across processes at startup
(fmjax.distributed.check_agreement): a host with a stale dataset fails fast."""
from __future__ import annotations

from fmjax.data import mixture
from fmjax.distributed import digest


def data_identity(config, get_source) -> str:
    """What names the data a run reads: source (or the mixture spec and, per component, its
    name), splits, sizes and a few documents' digests."""
    spec = getattr(config.data, "mixture", "")
    if not spec:
        return "; ".join([f"source={config.data.source}"] + _splits_identity(
            lambda split: get_source(config, split)))
    parts = [f"mixture={spec}"]
    for split in ("train", "validation"):
        for component, source in mixture.open_components(config, split, get_source):
            parts += [f"{component.name}({component.weight:g}) " + p
                      for p in _splits_identity(lambda _: source, splits=(split,))]
    return "; ".join(parts)


def _splits_identity(source_of, splits=("train", "validation")) -> list[str]:
    parts = []
    for split in splits:
        source = source_of(split)
        n = len(source)
        sample = sorted({0, n // 2, n - 1}) if n else []
        texts = "".join(digest(str(source[i]["text"])).hex() for i in sample)
        parts.append(f"{split}: {n} documents {digest(texts).hex()[:16]}")
    return parts
