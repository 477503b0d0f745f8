"""Upload checks: formats, corruption, size limits, base64; default output sizes."""

from __future__ import annotations

import base64

import pytest
from PIL import Image

from easel.shared.errors import ValidationFailed
from easel.shared.images import ImageTooLarge, as_mask, decode_base64, default_size, load_image
from tests.factories import encode, gradient

MB = 1024 * 1024


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_supported_formats_load(fmt: str) -> None:
    image = load_image("image", encode(gradient(40, 24), fmt), MB, 10_000)
    assert image.size == (40, 24)


def test_not_an_image() -> None:
    with pytest.raises(ValidationFailed, match="image: is not a PNG, JPEG or WebP image"):
        load_image("image", b"hello, world", MB, 10_000)


def test_unsupported_format_is_named() -> None:
    with pytest.raises(ValidationFailed, match="format GIF is not supported") as info:
        load_image("mask", encode(gradient(), "GIF"), MB, 10_000)
    assert info.value.details[0] == {
        "field": "mask",
        "message": "format GIF is not supported; send PNG, JPEG or WebP",
        "value": "GIF",
    }


def test_truncated_file() -> None:
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ValidationFailed, match="image: is truncated or corrupt"):
        load_image("image", data[: len(data) // 2], MB, 10_000)


def test_too_many_bytes_is_413() -> None:
    with pytest.raises(ImageTooLarge) as info:
        load_image("image", encode(gradient()), 100, 10_000)
    assert info.value.status == 413 and "exceeds the limit of 100 bytes" in info.value.message


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = encode(Image.new("L", (6000, 6000), 0))  # 36 Mpx that compress to ~40 kB
    assert len(bomb) < 100_000
    with pytest.raises(ValidationFailed, match="6000x6000 is 36000000 pixels; at most 1000000"):
        load_image("image", bomb, MB, 1_000_000)


def test_base64_and_data_urls() -> None:
    raw = encode(gradient())
    text = base64.b64encode(raw).decode()
    assert decode_base64("image", text) == raw
    assert decode_base64("image", "data:image/png;base64," + text) == raw
    with pytest.raises(ValidationFailed, match="image: is not valid base64"):
        decode_base64("image", "not base64 at all!")


def test_mask_modes_become_one_channel() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 255, 255, 255))
    assert as_mask(rgba).mode == "L" and as_mask(rgba).getpixel((1, 1)) == 255
    assert as_mask(Image.new("RGB", (4, 4), "white")).getpixel((0, 0)) == 255


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (512, 384)), ((100, 90), (96, 88)), ((30, 60), (64, 128)), ((256, 256), (256, 256))],
)
def test_default_size_fits_the_model(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert default_size(*size, 64, 512) == expected
