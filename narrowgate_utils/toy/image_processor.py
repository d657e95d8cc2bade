"""Pixel processor of the toy non-native (LLaVA) model: 32-pixel images, CLIP normalisation."""
from __future__ import annotations

from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from ..data.toy import TOY_IMAGE_SIZE


def toy_image_processor() -> CLIPImageProcessorPil:
    """The image processor of the toy LLaVA (32 px, CLIP normalisation, no torchvision)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": TOY_IMAGE_SIZE}, crop_size={"height": TOY_IMAGE_SIZE, "width": TOY_IMAGE_SIZE},
        do_center_crop=True, do_convert_rgb=True,
    )
