"""Named TFDS text datasets for pretraining, as data: where the text is, which split is
evaluated, what cleanup a reader expects, and what preparing them once takes.

`--config.data.source=pg19` (or `c4/en`, `lm1b`, `wiki40b/en`, `tiny_shakespeare`) reads the
right feature without the user knowing its name. A name may carry a version
(`c4/en:3.0.1`, the version of a copy prepared elsewhere). A TFDS name not listed here is still
read, its text taken from `config.data.text_field`. Adding a dataset is one row in `NAMED`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

WIKI40B_MARKERS = ("_START_ARTICLE_", "_START_SECTION_", "_START_PARAGRAPH_")
WIKI40B_NEWLINE = "_NEWLINE_"


def wiki40b_plain_text(text: str) -> str:
    """A wiki40b article as plain text. Stored, each marker line announces the next line
    (`_START_ARTICLE_` the title, `_START_SECTION_` a heading, `_START_PARAGRAPH_` a paragraph
    whose line breaks are written `_NEWLINE_`); here the title, headings and paragraphs are
    blocks separated by a blank line, and `_NEWLINE_` is a newline."""
    blocks = [line.replace(WIKI40B_NEWLINE, "\n") for line in text.split("\n")
              if line.strip() and line.strip() not in WIKI40B_MARKERS]
    return "\n\n".join(blocks)


@dataclasses.dataclass(frozen=True)
class TfdsText:
    """How fmjax reads one TFDS text dataset."""
    text_feature: str  # feature holding a document's text
    validation_split: str = ""  # split evaluated on; "" = 'validation', else 'test'
    clean: Callable[[str], str] | None = None  # stored text -> plain text (module-level fn)
    size: str = ""  # array_record files on disk (approximate; the README's table)
    build_needs: str = ""  # what `tfds build` needs beyond TensorFlow (the not-prepared error)
    split_documents_on: str = ""  # cut each stored text into documents here (small sets: in memory)


NAMED: dict[str, TfdsText] = {
    "c4/en": TfdsText(  # 364,868,892 train / 364,608 validation web pages
        "text", "validation", size="about 800 GiB",
        build_needs="Apache Beam (`pip install apache-beam`, best on Cloud Dataflow: it "
                    "downloads and cleans about 7 TB of Common Crawl)"),
    "lm1b": TfdsText(  # 30,301,028 train / 306,688 test sentences; no validation split
        "text", "test", size="about 4.4 GiB"),
    "wiki40b/en": TfdsText(  # 2,926,536 / 163,597 / 162,274 articles
        "text", "validation", clean=wiki40b_plain_text, size="about 10 GiB",
        build_needs="Apache Beam (`pip install apache-beam`)"),
    "pg19": TfdsText(  # 28,602 / 50 / 100 books, about 400 kB of text each
        "book_text", "validation", size="about 11 GiB",
        build_needs="read access to gs://deepmind-gutenberg"),
    "tiny_shakespeare": TfdsText(  # ONE text per split: 1.0 MB / 55 kB / 55 kB; read as
        "text", "validation", size="about 1 MiB",  # its blank-line separated speeches
        split_documents_on="\n\n"),
}


def base_name(source: str) -> str:
    """'c4/en:3.0.1' -> 'c4/en' (the table is keyed by name without version)."""
    return source.split(":")[0]


def spec_for(source: str, text_field: str) -> TfdsText:
    """The table's row for `source`, else the generic reading: `text_field`, no cleanup."""
    return NAMED.get(base_name(source)) or TfdsText(text_field)
