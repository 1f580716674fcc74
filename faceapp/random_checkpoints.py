"""CLIP checkpoints with random weights, which load offline: ``flask models random``.

The tests and benchmarks run on these where no pretrained weights can be downloaded. A checkpoint
is written the way a pulled model is (weights, processor and manifest, its folder replaced whole)
and loads through the same ``from_pretrained`` path (faceapp/face_models.py's ``load_clip``).
"""

from __future__ import annotations

import os
from typing import Any

from faceapp.atomic import replace_folder, staging_folder
from faceapp.clip_vocab import bpe_vocab, byte_level_vocab
from faceapp.model_files import build_manifest, write_manifest

RANDOM_SIZES: dict[str, dict[str, Any]] = {
    # A few MB: loads in well under a second, for the test suite.
    "tiny": {
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "projection_dim": 16,
        "vocab_size": None,  # the tokenizer's own size
    },
    # openai/clip-vit-base-patch32's architecture (151 M parameters), for benchmarks.
    "base": {
        "text": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
        },
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        "projection_dim": 512,
        "vocab_size": 49408,
    },
}


def write_random_checkpoint(
    folder: str, size: str = "tiny", seed: int = 0, bpe_file: str | None = None
) -> str:
    """Write a CLIP checkpoint with random weights that loads offline through `load_clip`.

    Its tokenizer is CLIP's own when `bpe_file` (CLIP's BPE file, faceapp/clip_vocab.py) is
    given, else one token per byte (longer prompts, same code path).
    """
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    if size not in RANDOM_SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(RANDOM_SIZES)}")
    spec = RANDOM_SIZES[size]
    vocab, merges = bpe_vocab(bpe_file) if bpe_file else byte_level_vocab()
    special = {
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    text = {
        **spec["text"],
        **special,
        "vocab_size": spec["vocab_size"] or len(vocab),
        "max_position_embeddings": 77,
    }
    config = CLIPConfig(
        text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"]
    )
    image_size = spec["vision"]["image_size"]
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=merges),
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = CLIPModel(config)

    with staging_folder(os.path.dirname(os.path.abspath(folder)), ".random-") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        manifest = build_manifest(
            staging,
            f"random-clip-{size}",
            None,
            source="random",
            random_weights=True,
            seed=seed,
            tokenizer="clip-bpe" if bpe_file else "byte-level",
        )
        write_manifest(staging, manifest)
        replace_folder(staging, folder)
    return folder
