"""Decoding and checking uploaded images (Pillow only; the web tier never imports torch)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from easel.shared.errors import EaselError, ValidationFailed, field_detail

ALLOWED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_DATA_URL = re.compile(r"^data:(?P<type>[\w/+.-]+)?(;[\w=-]+)*;base64,", re.IGNORECASE)


class ImageTooLarge(EaselError):
    status, code = 413, "payload_too_large"


def _invalid(field: str, message: str, value: object = None) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", [field_detail(field, message, value)])


def decode_base64(field: str, text: str) -> bytes:
    """Bytes of a base64 string or ``data:`` URL; ``ValidationFailed`` naming ``field``."""
    payload = _DATA_URL.sub("", text.strip(), count=1)
    try:
        return base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(field, "is not valid base64", text[:40] + ("..." if len(text) > 40 else "")) from None


def load_image(field: str, data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Open, check and fully decode an uploaded PNG, JPEG or WebP.

    Raises ``ImageTooLarge`` (413) past ``max_bytes``, and ``ValidationFailed`` (422)
    for anything that is not an image, a format other than the three, a truncated
    file, or more than ``max_pixels`` pixels (checked before decoding, so a
    decompression bomb never allocates its pixels).
    """
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"{field}: {len(data)} bytes exceeds the limit of {max_bytes} bytes",
            [field_detail(field, f"exceeds the limit of {max_bytes} bytes", len(data))],
        )
    if not data:
        raise _invalid(field, "is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in ALLOWED_FORMATS:
                raise _invalid(field, f"format {fmt} is not supported; send PNG, JPEG or WebP", fmt)
            width, height = image.size
            if width * height > max_pixels:
                raise _invalid(
                    field,
                    f"{width}x{height} is {width * height} pixels; at most {max_pixels} are allowed",
                    f"{width}x{height}",
                )
            image.load()
    except ValidationFailed:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refused it for its size before we could ask: read the size from the header
        size = declared_size(data)
        shown = f"{size[0]}x{size[1]}" if size else "the image"
        pixels = f"{size[0] * size[1]} pixels" if size else "too many pixels"
        raise _invalid(
            field, f"{shown} is {pixels}; at most {max_pixels} are allowed", shown if size else None
        ) from None
    except UnidentifiedImageError:
        raise _invalid(field, "is not a PNG, JPEG or WebP image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _invalid(field, f"is truncated or corrupt ({exc})") from None
    return image


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The width and height a PNG, JPEG or WebP header declares, without Pillow's
    decompression-bomb check (nothing is decoded); ``None`` if no format reads it."""
    Image.init()
    for fmt in ALLOWED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(data[:16]):
            continue
        try:
            return factory(io.BytesIO(data), "").size  # "": no file name, as Image.open passes
        except (OSError, SyntaxError, ValueError):
            continue
    return None


def as_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, "white")
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def as_mask(image: Image.Image) -> Image.Image:
    """One channel: white repaints, black keeps. An alpha-only mask uses its alpha."""
    if image.mode in ("RGBA", "LA"):
        alpha = image.getchannel("A")
        if alpha.getextrema() != (255, 255):  # a transparent-painted mask
            return alpha
    return image.convert("L")


def encode_png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def default_size(width: int, height: int, min_size: int, max_size: int, multiple: int = 8) -> tuple[int, int]:
    """The input's size scaled into ``[min_size, max_size]`` (aspect kept), each side
    rounded down to a multiple of ``multiple`` (the model family's)."""
    scale = 1.0
    if max(width, height) > max_size:
        scale = max_size / max(width, height)
    elif min(width, height) < min_size:
        scale = min(min_size / min(width, height), max_size / max(width, height))

    def fit(side: int) -> int:
        return min(max_size, max(min_size, int(side * scale) // multiple * multiple))

    return fit(width), fit(height)
