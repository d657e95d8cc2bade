"""Image+text processors for families whose transformers 5.23 processor needs torchvision.

``PixtralProcessor`` imports torchvision at module load, and ``Qwen2VLProcessor`` /
``LlavaOnevisionProcessor`` insist on a video processor (torchvision-only). The classes here
are the same processors restricted to images, working with the ``*ImageProcessorPil``
image processors; they expand the image placeholder exactly like upstream
(``replace_image_token``). Where torchvision is installed, the upstream processor that
``AutoProcessor`` loads is used unchanged; :func:`complete_processor` rebuilds an image-only
processor when loading fell back to a bare tokenizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import LlavaOnevisionProcessor, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class PixtralImageOnlyProcessor(ProcessorMixin):
    """``PixtralProcessor`` (transformers 5.23) without its torchvision import: each image becomes
    rows of ``[IMG]×w`` closed by ``[IMG_BREAK]``, the last row closed by ``[IMG_END]``."""

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 16, spatial_merge_size: int = 1,
                 chat_template=None, image_token: str = "[IMG]", image_break_token: str = "[IMG_BREAK]",
                 image_end_token: str = "[IMG_END]", **kwargs: Any) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    def _process_images(self, images, **images_kwargs):
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        patch = self.patch_size * self.spatial_merge_size
        height, width = image_inputs["image_sizes"][image_idx]
        row = self.image_token * (int(width) // patch)
        rows = int(height) // patch
        return (row + self.image_break_token) * (rows - 1) + row + self.image_end_token


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` (also used by Qwen2.5-VL) without the torchvision-only video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs: Any) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class LlavaOnevisionImageOnlyProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without the torchvision-only video processor."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens: int | None = None,
                 vision_feature_select_strategy: str | None = None, chat_template=None, image_token: str = "<image>",
                 vision_aspect_ratio: str = "anyres_max_9", **kwargs: Any) -> None:
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, vision_aspect_ratio=vision_aspect_ratio, **kwargs)


def complete_processor(processor: Any, source: str | Path, build: Any) -> Any:
    """Return ``processor`` if it can process images; otherwise (a bare tokenizer, as
    ``registry.load`` falls back to when ``AutoProcessor`` fails) load the checkpoint's image
    processor (``AutoImageProcessor`` picks the PIL backend without torchvision) and call
    ``build(image_processor, tokenizer)``."""
    if getattr(processor, "image_processor", None) is not None:
        return processor
    from transformers import AutoImageProcessor

    try:
        image_processor = AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not load an image processor for '{source}': {error}. The checkpoint needs a "
                         "preprocessor_config.json.") from error
    return build(image_processor, processor)
