"""InstructPix2Pix (timbrooks/instruct-pix2pix) through StableDiffusionInstructPix2PixPipeline.

Sizes: the model works at any size whose sides are multiples of 8 (its VAE
factor). Native size = the input rounded down to multiples of 8; params
height/width resize the input to that size first (the pipeline itself has no
height/width arguments and generates at the input's size). With the default
size policy "input" the result is resized back to the input's exact size, which
for inputs already on the 8-pixel grid changes nothing.

Useful params: num_inference_steps (pipeline default 100; 20-50 is typical),
guidance_scale (7.5), image_guidance_scale (1.5), negative_prompt.
"""

from __future__ import annotations

from typing import Any

from .diffusers_common import DiffusersEditModel, round_down


class InstructPix2PixModel(DiffusersEditModel):
    name = "instruct_pix2pix"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    tiny_family = "instruct_pix2pix"
    latent_patch = 1

    def call_kwargs(self, images, params: dict[str, Any]) -> dict[str, Any]:
        image = images[0]
        size = self.requested_size(params) or (
            round_down(image.width, self.size_multiple),
            round_down(image.height, self.size_multiple),
        )
        if image.size != size:
            from PIL import Image

            image = image.resize(size, Image.Resampling.LANCZOS)
        return {**params, "image": image}
