"""LLaVA-OneVision with `image_aspect_ratio: pad`: one padded square tile per image, no any-res grid.

The paper loaded `lmms-lab/llava-onevision-qwen2-7b-ov` with `overwrite_config:
{"image_aspect_ratio": "pad"}`: each image is padded to a square with the image-mean colour,
resized to one 384 px tile, and its features get one trailing newline embedding. The
transformers port does exactly this for images of multi-image samples (`batch_num_images` != 1:
`pad_to_square` in the image processor, no patching in the model, `num_image_tokens + 1` tokens
in the processor), but patches every single image with the any-res grid. This wrapper asks the
port's own multi-image path for each image, so the tile, its token count and the features are
the library's, and only the routing is ours.
"""

from __future__ import annotations

from typing import Any

from hiertrain.base.errors import HierError


class PaddedTileProcessor:
    """Wraps a `LlavaOnevisionProcessor`; everything but image inputs is the wrapped processor's."""

    def __init__(self, processor: Any) -> None:
        if not hasattr(processor, "num_image_tokens") or not hasattr(processor, "image_token"):
            raise HierError(
                f"image_aspect_ratio: pad is a LLaVA-OneVision setting; {type(processor).__name__} has no such mode"
            )
        self.processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)

    def tokens_per_image(self) -> int:
        """Image tokens of one padded tile: the tile's features plus the newline embedding."""
        extra = -1 if self.processor.vision_feature_select_strategy == "default" else 0  # no CLS
        return self.processor.num_image_tokens + 1 + extra

    def __call__(self, text: list[str] | str | None = None, images: list[Any] | None = None, **kwargs: Any) -> Any:
        if images is None:
            return self.processor(text=text, **kwargs)
        import torch

        texts = [text] if isinstance(text, str) else list(text or [])
        token = self.processor.image_token
        if sum(t.count(token) for t in texts) != len(images):
            raise HierError(f"{len(images)} images for {sum(t.count(token) for t in texts)} {token} placeholders")
        # One sample holding every image (plus a repeat when there is only one) is the port's
        # multi-image case: each image becomes one padded tile. `batch_num_images` != 1 tells the
        # model the same, so it does not look for an any-res grid.
        group = list(images) + ([images[0]] if len(images) == 1 else [])
        tiles = self.processor.image_processor(images=[group], return_tensors=kwargs.get("return_tensors", "pt"))
        expanded = [t.replace(token, token * self.tokens_per_image()) for t in texts]
        inputs = self.processor.tokenizer(expanded, **kwargs)  # the processor refuses placeholders without images
        inputs["pixel_values"] = tiles["pixel_values"][: len(images)]
        inputs["image_sizes"] = tiles["image_sizes"][: len(images)]
        inputs["batch_num_images"] = torch.tensor([len(group)])
        return inputs
