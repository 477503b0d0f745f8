"""Live previews: a cheap picture of the latents while a job denoises.

The latents of the SD family (4 channels, 1/8 of the output size) map to RGB well
enough for a preview through one linear map per family, a 4x3 matrix and a bias (the
"latent to RGB" factors ComfyUI and AUTOMATIC1111's cheap approximation use). No VAE
runs: the step callback copies the few latents it previews to the CPU (``4 x h/8 x
w/8`` numbers per image) and hands them to one background thread, which maps them to
RGB, upscales, encodes a JPEG, overwrites the job's preview object
(``easel.shared.jobs.preview_key``) in the storage every web process reads, and then
records the step on the job row. When that thread is still busy with the last
preview, the step callback skips this one instead of queueing: denoising never waits
for a preview. A worker takes at most one preview per ``EASEL_PREVIEW_INTERVAL_SECONDS``
over all its batches, and a batch's first one interval after the batch started: a
batch that ends sooner costs nothing (its images come before a preview would help),
and a long one shows the latents once they have taken shape (``bench.preview``
measures the cost: within run-to-run noise, docs/benchmarks.md).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from easel.shared.errors import StorageError
from easel.shared.jobs import preview_key
from easel.shared.storage import Storage
from easel.shared.transitions import record_preview
from easel.worker.engine.generate import LatentCallback

log = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 512
"""Previews are upscaled to the output size, or to this longest side when it is larger."""
JPEG_QUALITY = 80


@dataclass(frozen=True)
class LatentRgb:
    """A family's linear latent -> RGB map: ``rgb = latent @ factors + bias``, in -1..1."""

    family: str
    factors: tuple[tuple[float, float, float], ...]  # one row per latent channel
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


# The factors ComfyUI ships (comfy/latent_formats.py), fitted on VAE-decoded images.
SD1 = LatentRgb(
    "sd1",
    (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
)
SDXL = LatentRgb(
    "sdxl",
    (
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    (0.1084, -0.0175, -0.0011),
)


def latent_rgb_for(pipe: Any) -> LatentRgb | None:
    """The latent map of ``pipe``'s family (docs/design.md principle 12), or ``None`` when the
    family has none here (previews are then skipped for its jobs)."""
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    if channels != 4:
        return None  # SD3 and Flux have 16-channel latents: no linear map here
    return SDXL if "XL" in type(pipe).__name__ else SD1


def preview_size(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """The output size, scaled down to ``max_side`` on its longer side if larger."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def latent_to_image(latent: Any, rgb: LatentRgb, size: tuple[int, int]) -> Image.Image:
    """The RGB preview of one image's latents (``channels x h x w``, a tensor or an array),
    upscaled to ``size`` (width, height).

    Noisy latents of an early step have a variance of about ``1 + sigma**2``; dividing by
    their spread when it exceeds 1 keeps early previews from saturating.
    """
    values = np.asarray(latent.float().numpy() if hasattr(latent, "numpy") else latent, dtype=np.float32)
    spread = float(values.std())
    if spread > 1.0:
        values = values / spread
    pixels = np.einsum("chw,cr->hwr", values, np.asarray(rgb.factors, dtype=np.float32))
    pixels += np.asarray(rgb.bias, dtype=np.float32)
    data = ((pixels + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(data, "RGB").resize(size, Image.Resampling.BILINEAR)


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@dataclass
class PreviewWriter:
    """The background thread of one worker's previews: encode, store, record."""

    sessions: sessionmaker[Session]
    storage: Storage
    worker_id: str
    interval: float
    written: int = 0
    last: float = float("-inf")
    """When the last preview was taken (``time.monotonic``), over all batches: at most one
    preview per ``interval`` per worker, however short its jobs."""
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)
    _pending: Future[None] | None = field(default=None, init=False, repr=False)

    @property
    def busy(self) -> bool:
        return self._pending is not None and not self._pending.done()

    def for_batch(
        self, pipe: Any, first_images: Mapping[int, str], active: Sequence[str], size: tuple[int, int]
    ) -> LatentCallback | None:
        """The latent callback of one pipeline call: ``first_images`` maps the index of each
        job's first image in the call to the job; ``active`` (kept up to date by the
        progress reporter) lists the jobs still in the call. ``None`` when previews are
        off or the model's family has no latent map."""
        rgb = latent_rgb_for(pipe)
        if self.interval <= 0 or rgb is None or not first_images:
            return None
        not_before = time.monotonic() + self.interval  # the batch's first: one interval in
        return _BatchPreviews(self, rgb, dict(first_images), active, preview_size(*size), not_before)

    def submit(self, step: int, latents: dict[str, Any], rgb: LatentRgb, size: tuple[int, int]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easel-preview")
        self._pending = self._pool.submit(self._write, step, latents, rgb, size)

    def drain(self) -> None:
        """Wait for the preview being written, if any (tests, shutdown)."""
        if self._pending is not None:
            self._pending.result()

    def _write(self, step: int, latents: dict[str, Any], rgb: LatentRgb, size: tuple[int, int]) -> None:
        stored = []
        for job_id, latent in latents.items():
            try:
                self.storage.put(
                    preview_key(job_id), encode_jpeg(latent_to_image(latent, rgb, size)), "image/jpeg"
                )
                stored.append(job_id)
            except StorageError as exc:  # a preview is a nicety: never fail the job for it
                log.warning("preview of job %s not stored: %s", job_id, exc, extra={"job_id": job_id})
        if not stored:
            return
        try:
            with self.sessions() as session:
                record_preview(session, stored, self.worker_id, step)
                session.commit()
            self.written += 1
        except SQLAlchemyError:
            log.warning("preview step of jobs %s not recorded (database unavailable)", ",".join(stored))


@dataclass
class _BatchPreviews:
    """The step callback's half: at most every ``interval`` seconds, and only when the
    writer is idle, copy the previewed latents to the CPU and hand them over."""

    writer: PreviewWriter
    rgb: LatentRgb
    first_images: dict[int, str]
    active: Sequence[str]
    size: tuple[int, int]
    not_before: float
    """No preview of this batch before this ``time.monotonic``."""

    def __call__(self, step: int, offset: int, latents: Any) -> None:
        now = time.monotonic()
        if now < self.not_before or now - self.writer.last < self.writer.interval or self.writer.busy:
            return
        picks = {
            job_id: index - offset
            for index, job_id in self.first_images.items()
            if offset <= index < offset + len(latents) and job_id in self.active
        }
        if not picks:
            return
        self.writer.last = now
        small = {job_id: latents[i].detach().to("cpu", copy=True) for job_id, i in picks.items()}
        self.writer.submit(step, small, self.rgb, self.size)
