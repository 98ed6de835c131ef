"""Qwen-Image-Edit (QwenImageEditPipeline) and Qwen-Image-Edit-Plus, i.e. 2509/2511
(QwenImageEditPlusPipeline, up to `max_images` input images per item).

Sizes: both pipelines scale the condition image(s) to about 1 MP internally,
whatever the output size. Native output size = about 1 MP (1024x1024 area) at
the first input image's aspect ratio, sides multiples of 32, as the pipelines
compute it (for Plus the adapter passes it explicitly: the pipeline itself
would follow the *last* image, while here the first image is the one edited).
params height/width set the output size (multiples of 16). With the default
size policy "input" the result is resized back to the first image's size.

Defaults: negative_prompt " " (the model cards' choice) while true_cfg_scale
(pipeline default 4.0) is above 1: without a negative prompt the pipelines skip
true CFG and warn on every item. Pass true_cfg_scale: 1 to run without CFG
(half the transformer passes).
Useful params: num_inference_steps (50; 40 on the 2509/2511 cards),
true_cfg_scale, negative_prompt, guidance_scale (2511 only).
"""

from __future__ import annotations

import math
from typing import Any

from .diffusers_common import DiffusersEditModel

NATIVE_AREA = 1024 * 1024


def native_size(width: int, height: int) -> tuple[int, int]:
    """About 1 MP at the aspect ratio width/height, sides multiples of 32 (the pipelines' own rule)."""
    ratio = width / height
    w = math.sqrt(NATIVE_AREA * ratio)
    return round(w / 32) * 32, round(w / ratio / 32) * 32


class QwenImageEditModel(DiffusersEditModel):
    name = "qwen_image_edit"
    pipeline_class = "QwenImageEditPipeline"
    tiny_family = "qwen_image_edit"

    def call_kwargs(self, images, params: dict[str, Any]) -> dict[str, Any]:
        width, height = self.requested_size(params) or native_size(*images[0].size)
        image = images[0] if self.max_images == 1 else images
        if params.get("true_cfg_scale", 4.0) > 1:  # 4.0: the pipelines' default
            params.setdefault("negative_prompt", " ")
        return {**params, "image": image, "height": height, "width": width}


class QwenImageEditPlusModel(QwenImageEditModel):
    name = "qwen_image_edit_plus"
    pipeline_class = "QwenImageEditPlusPipeline"
    tiny_family = "qwen_image_edit_plus"
    max_images = 3  # the 2509/2511 cards: 1 to 3 images work best
