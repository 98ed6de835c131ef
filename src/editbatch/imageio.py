"""Reading inputs and writing outputs on the worker."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image, ImageOps



_PIL_LIMIT = threading.Lock()


class ImageTooLarge(ValueError):
    """More pixels than `dataset.max_pixels`: refused before decoding."""


def open_limited(path: str | Path, max_pixels: int) -> Image.Image:
    """Open an image lazily (header only) and refuse it if it has more than `max_pixels` pixels.

    PIL's own guard (a warning, then an error at twice `Image.MAX_IMAGE_PIXELS`)
    is switched off for this one open, under a lock: ours is the one that
    applies, and it can name the image's width and height.
    """
    with _PIL_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageTooLarge(f"image too large: {path} is {width}x{height} = {width * height:,} pixels, "
                            f"over dataset.max_pixels = {max_pixels:,}")
    return img


def load_rgb(path: str | Path, max_pixels: int) -> Image.Image:
    """Decode an image, apply its EXIF orientation and convert any mode to RGB.

    Transparent images are composited on white rather than dropping alpha,
    which would turn transparent areas into whatever colour they hide.
    """
    with open_limited(path, max_pixels) as img:
        return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """A copy of `img` in RGB, transparent areas on white."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """The PNG file of `image`, quickly compressed: outputs are written once per item and read rarely."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
