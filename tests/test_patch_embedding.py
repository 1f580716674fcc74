"""The patch embedding as one matrix product (faceapp/patch_embedding.py): the convolution's
numbers, and only where the kernels tile the image."""

from __future__ import annotations

import pytest
import torch

from faceapp import face_models
from faceapp.patch_embedding import PatchEmbedding, compute_patches_as_matmul, tiles_the_image


def _pair(conv: torch.nn.Conv2d) -> tuple[torch.nn.Conv2d, torch.nn.Conv2d]:
    """`conv` and a copy of it computed as a matrix product (same weights)."""
    swapped = torch.nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        bias=conv.bias is not None,
    )
    swapped.load_state_dict(conv.state_dict())
    swapped.__class__ = PatchEmbedding
    return conv, swapped


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("kernel", "size"),
    [((8, 8), (64, 64)), ((8, 8), (70, 67)), ((4, 6), (24, 30)), ((16, 16), (16, 16))],
)
def test_the_matrix_product_gives_the_convolutions_numbers(kernel, size, bias):
    """Square and oblong kernels, images they tile and images with a remainder (which a
    convolution without padding leaves out), with and without a bias, a batch of three."""
    torch.manual_seed(0)
    conv, swapped = _pair(torch.nn.Conv2d(3, 12, kernel, stride=kernel, bias=bias))
    pixels = torch.randn(3, 3, *size)
    with torch.inference_mode():
        expected, got = conv(pixels), swapped(pixels)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)


def test_in_bfloat16_it_is_within_a_rounding_step():
    torch.manual_seed(1)
    conv, swapped = _pair(torch.nn.Conv2d(3, 64, 32, stride=32, bias=False))
    conv, swapped = conv.to(torch.bfloat16), swapped.to(torch.bfloat16)
    assert type(swapped) is PatchEmbedding  # .to(dtype) keeps the class
    pixels = torch.randn(2, 3, 224, 224).to(torch.bfloat16)
    with torch.inference_mode():
        expected, got = conv(pixels).float(), swapped(pixels).float()
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(3, 8, 4, stride=2),  # overlapping windows
        torch.nn.Conv2d(3, 8, 4, stride=4, padding=1),
        torch.nn.Conv2d(3, 8, 4, stride=4, dilation=2),
        torch.nn.Conv2d(4, 8, 4, stride=4, groups=2),
        torch.nn.Conv2d(3, 8, 4, stride=4, padding_mode="reflect"),
    ],
)
def test_a_convolution_whose_kernels_do_not_tile_the_image_is_left_alone(conv):
    model = torch.nn.Module()
    model.vision_model = torch.nn.Module()
    model.vision_model.embeddings = torch.nn.Module()
    model.vision_model.embeddings.patch_embedding = conv
    assert not tiles_the_image(conv)
    assert compute_patches_as_matmul(model) is False
    assert type(conv) is torch.nn.Conv2d
    assert compute_patches_as_matmul(torch.nn.Linear(2, 2)) is False  # no vision tower at all


def test_the_loaded_model_embeds_as_before_with_its_patches_as_a_matmul(tiny_model_dir, astronaut):
    from transformers import CLIPModel

    model = face_models.load_clip(
        {"MODEL_NAME": tiny_model_dir, "MODELS_DIR": tiny_model_dir, "DTYPE": "float32"}
    )
    patches = model.model.vision_model.embeddings.patch_embedding
    assert type(patches) is PatchEmbedding
    assert "vision_model.embeddings.patch_embedding.weight" in model.model.state_dict()
    plain = CLIPModel.from_pretrained(model.folder).eval()
    assert type(plain.vision_model.embeddings.patch_embedding) is torch.nn.Conv2d
    crop = astronaut.crop((150, 40, 300, 190))
    pixels = torch.from_numpy(model.prepare_images([crop])[0])[None]
    with torch.inference_mode():
        expected = face_models._pooled(plain.get_image_features(pixel_values=pixels))
        expected = torch.nn.functional.normalize(expected, dim=-1)
    got = model.encode_pixels(model.prepare_images([crop]))
    assert torch.allclose(got, expected, atol=1e-5)
