"""PNG encoding with the generation parameters in a text chunk."""

from __future__ import annotations

import io
import json
from typing import Any, cast

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"


def encode_png(image: Image.Image, params: dict[str, Any]) -> bytes:
    """The image as PNG bytes with ``params`` as JSON in the ``parameters`` tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, json.dumps(params, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def read_parameters(data: bytes) -> dict[str, Any]:
    """The parameters a PNG made by ``encode_png`` carries."""
    with Image.open(io.BytesIO(data)) as image:
        png = cast(PngImagePlugin.PngImageFile, image)  # .text is PNG-only
        parameters: dict[str, Any] = json.loads(png.text[PARAMETERS_KEY])
    return parameters
