"""FLUX.1 Kontext (black-forest-labs/FLUX.1-Kontext-dev) through FluxKontextPipeline.

Sizes: Kontext was trained on about 1 MP at a fixed set of resolutions. Native
size = the preferred Kontext resolution closest to the input's aspect ratio
(what the pipeline's own auto-resize picks for the condition image). With
params height/width the output is that size (multiples of 16) and the
condition image is scaled to the same area at its own aspect ratio; this is
what keeps small test sizes small, since the pipeline would otherwise push both
to about 1 MP. Either way the adapter resizes the condition image itself and
calls the pipeline with ``_auto_resize=False`` and ``max_area`` = the output
area (params may still set either to override). With the default size policy
"input" the result is resized back to the input's exact size.

Useful params: num_inference_steps (28), guidance_scale (2.5 is the model card's
choice; pipeline default 3.5), true_cfg_scale with negative_prompt.
"""

from __future__ import annotations

import math
from typing import Any

from .diffusers_common import DiffusersEditModel, round_down


class FluxKontextModel(DiffusersEditModel):
    name = "flux_kontext"
    pipeline_class = "FluxKontextPipeline"
    tiny_family = "flux_kontext"

    def native_size(self, width: int, height: int) -> tuple[int, int]:
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        aspect = width / height
        _, w, h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        return round_down(w, self.size_multiple), round_down(h, self.size_multiple)

    def call_kwargs(self, images, params: dict[str, Any]) -> dict[str, Any]:
        from PIL import Image

        image = images[0]
        requested = self.requested_size(params)
        if requested is None:
            width, height = cond = self.native_size(*image.size)
        else:
            width, height = requested
            scale = math.sqrt(width * height / (image.width * image.height))
            cond = tuple(round_down(side * scale, self.size_multiple) for side in image.size)
        if image.size != cond:
            image = image.resize(cond, Image.Resampling.LANCZOS)
        kwargs = {"max_area": width * height, "_auto_resize": False, **params}
        return {**kwargs, "image": image, "height": height, "width": width}
