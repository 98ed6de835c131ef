"""Reading inputs and writing outputs on the worker."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image, apply its EXIF orientation and convert any mode to RGB.

    Transparent images are composited on white rather than dropping alpha,
    which would turn transparent areas into whatever colour they hide.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        return img.convert("RGB")


def save_png(image: Image.Image, path: Path) -> None:
    """Write atomically: a crash never leaves a truncated PNG under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)
