"""A vision transformer's patch embedding computed as one matrix product instead of a convolution.

CLIP's image encoder starts with a convolution whose kernel tiles the image (ViT-B/32: 32x32
kernels at stride 32, 768 of them over 3 channels). PyTorch's CPU convolution (oneDNN) reorders
that 4.7 MB bfloat16 weight into its blocked layout on every call: 2.9 ms of a 45 ms batch-1
forward pass on the 2-core AMD EPYC, and, in a gunicorn worker (where allocations of 4 MiB or
more are mapped afresh: faceapp/decoding.py), 1537 page faults per forward pass. Cut into patches,
the same convolution is one matrix product against the weight as it is stored (the layout every
other layer of the model uses): 0.63 ms, no reorder, no faults; 4.5 against 7.8 ms at batch 8.
The numbers are the convolution's, to float32 rounding (1e-5) and a bfloat16 step (1/128).

:func:`compute_patches_as_matmul` swaps the class of such a convolution in place, so its weight
(memory-mapped, shared between workers), its name in the state dict and ``model.to(dtype)``
stay as they were.
"""

from __future__ import annotations

from typing import Any

import torch


class PatchEmbedding(torch.nn.Conv2d):
    """A Conv2d whose kernels tile the image (stride == kernel size, no padding, dilation or
    groups), computed as one matrix product over the patches."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = pixels.shape
        kernel_h, kernel_w = self.kernel_size
        rows, columns = height // kernel_h, width // kernel_w
        # A convolution without padding leaves out what does not fill a whole patch.
        tiled = pixels[:, :, : rows * kernel_h, : columns * kernel_w].reshape(
            batch, channels, rows, kernel_h, columns, kernel_w
        )
        patches = tiled.permute(0, 2, 4, 1, 3, 5).reshape(
            batch, rows * columns, channels * kernel_h * kernel_w
        )
        weight = self.weight.reshape(self.out_channels, -1)  # a view: the kernels as rows
        out = torch.nn.functional.linear(patches, weight, self.bias)
        return out.transpose(1, 2).reshape(batch, self.out_channels, rows, columns)


def tiles_the_image(conv: Any) -> bool:
    """Whether `conv` is a plain Conv2d whose kernels tile its input (a PatchEmbedding can be)."""
    return (
        type(conv) is torch.nn.Conv2d
        and tuple(conv.stride) == tuple(conv.kernel_size)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def compute_patches_as_matmul(model: Any) -> bool:
    """Make a CLIP model's patch embedding a :class:`PatchEmbedding` (in place). False, and the
    model as it was, when it has none that tiles the image."""
    vision = getattr(model, "vision_model", None)
    embeddings = getattr(vision, "embeddings", None)
    conv = getattr(embeddings, "patch_embedding", None)
    if not tiles_the_image(conv):
        return False
    conv.__class__ = PatchEmbedding
    return True
