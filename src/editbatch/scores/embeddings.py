"""CLIP and DINOv2 embeddings (transformers), from a hub id, a local folder, or `tiny`.

`tiny` builds random-weight models from small configs with a fixed seed, so
tests and dry runs never download. Images are preprocessed here (resize the
short side, centre crop, normalise) with the mean and std the model's
preprocessor_config.json names (CLIP's or ImageNet's defaults otherwise), so no
image-processor class is needed (several want torchvision).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_SEED = 0


@dataclass
class Embedder:
    model: Any
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str
    tokenizer: Any = None

    def pixels(self, images: list[Image.Image]):
        import torch

        batch = [_prepare(im, self.size, self.mean, self.std) for im in images]
        return torch.from_numpy(np.stack(batch)).to(self.device)


def _prepare(image: Image.Image, size: int, mean, std) -> np.ndarray:
    image = image.convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                         Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    arr = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    return ((arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)).transpose(2, 0, 1)


def _norms(path: str, default_mean, default_std) -> tuple[tuple, tuple]:
    config = Path(path) / "preprocessor_config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        return tuple(data.get("image_mean", default_mean)), tuple(data.get("image_std", default_std))
    return default_mean, default_std


def load_clip(path: str, device: str) -> Embedder:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    if path == "tiny":
        from ..models.tiny.text import clip_tokenizer

        tokenizer = clip_tokenizer()
        torch.manual_seed(TINY_SEED)
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      image_size=30, patch_size=2)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))
        mean, std = CLIP_MEAN, CLIP_STD
    else:
        model = CLIPModel.from_pretrained(path)
        tokenizer = CLIPTokenizer.from_pretrained(path)
        mean, std = _norms(path, CLIP_MEAN, CLIP_STD)
    model.eval().to(device)
    return Embedder(model, model.config.vision_config.image_size, mean, std, device, tokenizer)


def load_dino(path: str, device: str) -> Embedder:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    if path == "tiny":
        torch.manual_seed(TINY_SEED)
        model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=37, image_size=30, patch_size=2))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        model = Dinov2Model.from_pretrained(path)
        mean, std = _norms(path, IMAGENET_MEAN, IMAGENET_STD)
    model.eval().to(device)
    return Embedder(model, model.config.image_size if path == "tiny" else 224, mean, std, device)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def clip_images(e: Embedder, images: list[Image.Image]):
    import torch

    with torch.inference_mode():
        out = e.model.get_image_features(pixel_values=e.pixels(images))
    return _unit(getattr(out, "pooler_output", out))


def clip_texts(e: Embedder, texts: list[str]):
    import torch

    tokens = e.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(e.device)
    with torch.inference_mode():
        out = e.model.get_text_features(**tokens)
    return _unit(getattr(out, "pooler_output", out))


def dino_images(e: Embedder, images: list[Image.Image]):
    import torch

    with torch.inference_mode():
        out = e.model(pixel_values=e.pixels(images))
    return _unit(out.last_hidden_state[:, 0])  # the CLS token, as DINO similarity uses
