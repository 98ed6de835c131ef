"""The per-item metrics of one edit, computed where the edit ran, right after it.

`ItemScorer` loads the CLIP and DINOv2 models a metric list needs once (a
worker keeps it for its life) and scores one output against its input, its
target and its texts. Metric names say what is compared:

| name | compares |
|---|---|
| `l1_input`, `l2_input`, `psnr_input`, `ssim_input` | output and first input image (pixels on [0, 1]) |
| `l1_target`, `l2_target`, `psnr_target`, `ssim_target` | output and target image |
| `clip_i_input`, `clip_i_target` | CLIP image embeddings (cosine) |
| `clip_t` | output image and the `output_caption` column, else the instruction (CLIP cosine) |
| `clip_dir` | CLIP direction: (output - input image) against (`output_caption` - `input_caption`) |
| `dino_input`, `dino_target` | DINOv2 CLS embeddings (cosine) |

A metric that cannot be computed for an item (no target, no captions) is
left out of its scores and named in `missing`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import pixel
from .cache import ScoreCache, score_key

METRICS_VERSION = 1  # bump when a metric's computation changes: cached scores are then recomputed
PIXEL = ("l1", "l2", "psnr", "ssim")
METRICS = tuple(f"{p}_{ref}" for ref in ("input", "target") for p in PIXEL) + (
    "clip_i_input", "clip_i_target", "clip_t", "clip_dir", "dino_input", "dino_target")


def image_digest(image: Image.Image) -> str:
    """A digest of the decoded pixels (the same whether the image is in memory or read back from its PNG)."""
    image = image.convert("RGB")
    h = hashlib.sha256(f"{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass
class Texts:
    instruction: str
    input_caption: str | None = None
    output_caption: str | None = None


@dataclass
class ItemScorer:
    metrics: tuple[str, ...]
    clip_path: str = "tiny"
    dino_path: str = "tiny"
    device: str = "cpu"
    clip: Any = None
    dino: Any = None
    loaded: bool = field(default=False)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], device: str = "cpu") -> "ItemScorer":
        return cls(tuple(spec.get("metrics") or ()), spec.get("clip", "tiny"), spec.get("dino", "tiny"), device)

    @property
    def identity(self) -> dict[str, Any]:
        """What decides the numbers apart from the images and texts (part of the cache key)."""
        return {"scorer": "metrics", "version": METRICS_VERSION, "metrics": sorted(self.metrics),
                "clip": self.clip_path if any(m.startswith("clip") for m in self.metrics) else None,
                "dino": self.dino_path if any(m.startswith("dino") for m in self.metrics) else None}

    def load(self) -> None:
        from . import embeddings

        if self.loaded:
            return
        if any(m.startswith("clip") for m in self.metrics):
            self.clip = embeddings.load_clip(self.clip_path, self.device)
        if any(m.startswith("dino") for m in self.metrics):
            self.dino = embeddings.load_dino(self.dino_path, self.device)
        self.loaded = True

    def score(self, output: Image.Image, inputs: list[Image.Image], target: Image.Image | None,
              texts: Texts) -> dict[str, Any]:
        self.load()
        wanted = set(self.metrics)
        refs = {"input": inputs[0] if inputs else None, "target": target}
        values: dict[str, float] = {}
        for ref_name, ref in refs.items():
            names = {p for p in PIXEL if f"{p}_{ref_name}" in wanted}
            if names and ref is not None:
                values.update({f"{k}_{ref_name}": v for k, v in pixel.pixel_scores(output, ref, names).items()})
        if self.clip is not None:
            values.update(self._clip(output, refs, texts, wanted))
        if self.dino is not None:
            values.update(self._dino(output, refs, wanted))
        missing = sorted(wanted - set(values))
        return {"metrics": values, "missing": missing} if missing else {"metrics": values}

    def _clip(self, output, refs, texts: Texts, wanted: set[str]) -> dict[str, float]:
        from .embeddings import clip_images, clip_texts

        names = [k for k in ("input", "target") if refs[k] is not None]
        emb = clip_images(self.clip, [output] + [refs[k] for k in names])
        out, by_ref = emb[0], dict(zip(names, emb[1:]))
        values = {f"clip_i_{k}": float(out @ e) for k, e in by_ref.items() if f"clip_i_{k}" in wanted}
        if "clip_t" in wanted:
            values["clip_t"] = float(out @ clip_texts(self.clip, [texts.output_caption or texts.instruction])[0])
        if "clip_dir" in wanted and "input" in by_ref and texts.input_caption and texts.output_caption:
            t_in, t_out = clip_texts(self.clip, [texts.input_caption, texts.output_caption])
            img_dir, txt_dir = out - by_ref["input"], t_out - t_in
            denom = float(img_dir.norm() * txt_dir.norm())
            if denom > 0:
                values["clip_dir"] = float(img_dir @ txt_dir) / denom
        return values

    def _dino(self, output, refs, wanted: set[str]) -> dict[str, float]:
        from .embeddings import dino_images

        names = [k for k in ("input", "target") if refs[k] is not None and f"dino_{k}" in wanted]
        if not names:
            return {}
        emb = dino_images(self.dino, [output] + [refs[k] for k in names])
        return {f"dino_{k}": float(emb[0] @ e) for k, e in zip(names, emb[1:])}


def cached_score(scorer: ItemScorer, cache: ScoreCache | None, output: Image.Image, inputs: list[Image.Image],
                 input_digests: list[str], target: Image.Image | None, target_digest: str | None,
                 texts: Texts) -> dict[str, Any]:
    """The item's metric scores, from the cache when every part of the key matches."""
    key = score_key(**scorer.identity, output=image_digest(output), inputs=input_digests, target=target_digest,
                    texts=json.dumps(texts.__dict__, sort_keys=True))
    found = cache.get(key) if cache is not None else None
    if found is not None:
        return {**found, "cached": True}
    scores = scorer.score(output, inputs, target, texts)
    if cache is not None:
        cache.put(key, scores)
    return scores
