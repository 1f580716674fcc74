"""The tokenizer vocabularies of random checkpoints: CLIP's own BPE when its file is at hand, else
one byte per token.

CLIP's BPE vocabulary is ``bpe_simple_vocab_16e6.txt.gz``, shipped inside the ``open_clip_torch``
wheel on PyPI. ``make install`` fetches that wheel without its dependencies (it would pull
torchvision, which does not import beside this torch), takes the one file out of it
(scripts/fetch-clip-bpe) and leaves it at :func:`default_bpe_file`; the tests and the benchmark
build their checkpoints' tokenizer from it, so prompts cost the tokens they cost with the real
model (an attribute prompt is about 14 tokens, where the byte-level vocabulary makes it about
57). faceapp itself never needs the file: without it, ``flask models random`` writes the
byte-level vocabulary, and nothing is fetched at run time.
"""

from __future__ import annotations

import gzip
import os
import sys

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: OpenAI's simple_tokenizer.py keeps the first 49152 - 256 - 2 merges of the file.
MERGES = 49152 - 256 - 2
SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def default_bpe_file() -> str | None:
    """CLIP's BPE file where ``make install`` puts it ($CLIP_BPE_FILE overrides), if it is there."""
    path = os.environ.get("CLIP_BPE_FILE") or os.path.join(sys.prefix, "share", "clip", BPE_FILE)
    return path if os.path.isfile(path) else None


def _alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def byte_level_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary with no merges: every byte, alone and word-final, plus the specials."""
    alphabet = _alphabet()
    tokens = [*alphabet, *(symbol + "</w>" for symbol in alphabet), *SPECIALS]
    return {token: index for index, token in enumerate(tokens)}, []


def bpe_vocab(path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges, built from its BPE file as OpenAI's simple_tokenizer.py does:
    the byte alphabet, the same word-final, each merge's joined pair, then the two specials
    (49408 entries)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGES + 1]]
    if len(merges) != MERGES or any(len(pair) != 2 for pair in merges):
        raise ValueError(f"{path} is not CLIP's BPE file ({len(merges)} merges read)")
    alphabet = _alphabet()
    tokens = [*alphabet, *(symbol + "</w>" for symbol in alphabet)]
    tokens += ["".join(pair) for pair in merges]
    tokens += SPECIALS
    return {token: index for index, token in enumerate(tokens)}, merges
