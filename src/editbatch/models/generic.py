"""Any diffusers pipeline: `pipeline_class` names the class (e.g. ``FluxKontextPipeline``,
``StableDiffusionXLImg2ImgPipeline``), or leave it out and DiffusionPipeline picks
the class the folder's model_index.json names. `load_kwargs` go to from_pretrained
(variant, revision, custom_pipeline, ...). ``path: tiny:<family>`` loads one of
the tiny test pipelines.

Call: ``image`` is the input image (a list when an item has several; left out
when it has none), then ``prompt`` = the instruction, then params as given.
Sizes: params height/width go to the pipeline untouched (it rounds them to its
own multiple); without them the pipeline picks its own size. The size policy
applies as for the other adapters ("input": resize the result back to the first
input image's size; "native"/"fixed": keep it). Items without images keep the
generated size.
"""

from __future__ import annotations

from typing import Any

from .diffusers_common import DiffusersEditModel, check_call_params, load_pipeline, prepare_pipeline


class DiffusersModel(DiffusersEditModel):
    name = "diffusers"
    max_images = 16

    def prepare(self) -> None:
        prepare_pipeline(self.config, pipeline_class=self.config.pipeline_class, tiny_family=None, check_class=False)

    def load(self) -> None:
        self.pipe = load_pipeline(
            self.config, self.torch_device, pipeline_class=self.config.pipeline_class, tiny_family=None,
            check_class=False,  # a folder may load into a compatible class (e.g. Flux -> FluxImg2Img)
        )
        check_call_params(self.pipe, self.config.params, strict=False)

    def check_request(self, request) -> None:
        if len(request.images) > self.max_images:
            super().check_request(request)

    def call_kwargs(self, images, params: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(params)
        if len(images) == 1:
            kwargs["image"] = images[0]
        elif images:
            kwargs["image"] = images
        return kwargs
