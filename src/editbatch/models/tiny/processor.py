"""A Qwen2-VL processor that works without torchvision.

In transformers 5, `Qwen2VLProcessor` insists on a video processor, and building
one needs torchvision (which must not be installed next to the CPU torch here).
The edit pipelines only send text and images, so this subclass passes
``video_processor=None``
and leaves that argument out of its signature.

diffusers records this class's module path in a saved pipeline's
model_index.json, so this module path is part of the on-disk format: keep it
stable, and import this module before `from_pretrained` on such a folder.
diffusers also looks the loading base class up in this module, hence the
`ProcessorMixin` re-export.
"""

from __future__ import annotations

from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class OfflineQwen2VLProcessor(Qwen2VLProcessor):
    # transformers derives the sub-processors from this signature: leaving `video_processor`
    # out of it is what stops the base class from looking for a video processor class.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


__all__ = ["OfflineQwen2VLProcessor", "ProcessorMixin"]
