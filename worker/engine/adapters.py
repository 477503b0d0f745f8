"""LoRA adapters and ControlNets on a worker: loaded once per model, kept warm, and
activated per pipeline call (docs/models.md).

A model's LoRAs load into its shared UNet / text encoders under their registry names
(``load_lora_weights(..., adapter_name=name)``), at most ``max_loaded`` of them (least
recently used deleted first). Its ControlNets load once (``ControlNetModel``) and their
pipelines are made with ``from_pipe``, so the base weights are shared. Both count in
the model's weight bytes (``ModelPipelines.bytes``), which the pipeline cache's budget
sees. ``lora_scope`` sets a call's adapters and weights before the call and switches
LoRA off after it: the worker runs one call at a time, and no call sees another's.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from easel.shared.adapters import ControlNetSpec, LoraRef
from easel.shared.errors import ModelLoadError
from easel.shared.models import JobType
from easel.shared.params import GenerationParams
from easel.shared.registry import Registry

log = logging.getLogger(__name__)

CANNY_LOW, CANNY_HIGH = 100, 200


@dataclass
class _ModelAdapters:
    """What one loaded model carries besides its own weights."""

    loras: OrderedDict[str, None] = field(default_factory=OrderedDict)
    controlnets: dict[str, Any] = field(default_factory=dict)
    control_pipes: dict[tuple[str, str], Any] = field(default_factory=dict)


_STATE: weakref.WeakKeyDictionary[Any, _ModelAdapters] = weakref.WeakKeyDictionary()


def _state(pipelines: Any) -> _ModelAdapters:
    if pipelines not in _STATE:
        _STATE[pipelines] = _ModelAdapters()
    return _STATE[pipelines]


def pipeline_for(pipelines: Any, params: GenerationParams, registry: Registry, max_loaded: int = 8) -> Any:
    """The pipeline for ``params``: its job type's, with its ControlNet if it has one,
    and its LoRAs loaded (activated per call by ``lora_scope``). ``ModelLoadError`` when
    an adapter cannot be loaded; the model itself stays usable."""
    pipe = pipelines.for_type(params.type)
    if params.loras:
        _load_loras(pipelines, params.loras, registry, max_loaded)
    if params.control is not None:
        spec = registry.controlnets.get(params.control.model)
        if spec is None:
            raise ModelLoadError(f"ControlNet {params.control.model!r} is not in this worker's models file")
        pipe = _control_pipe(pipelines, pipe, params.type, spec)
    return pipe


def _load_loras(pipelines: Any, refs: Sequence[LoraRef], registry: Registry, max_loaded: int) -> None:
    state, base = _state(pipelines), pipelines.base
    for ref in refs:
        if ref.name in state.loras:
            state.loras.move_to_end(ref.name)
            continue
        spec = registry.loras.get(ref.name)
        if spec is None:
            raise ModelLoadError(f"LoRA {ref.name!r} is not in this worker's models file")
        wanted = {r.name for r in refs}
        while len(state.loras) >= max_loaded and set(state.loras) - wanted:
            old = next(name for name in state.loras if name not in wanted)
            base.delete_adapters(old)
            del state.loras[old]
            log.info("unloaded LoRA %s from model %s", old, pipelines.spec.name)
        try:
            base.load_lora_weights(spec.location, adapter_name=ref.name)
        except Exception as exc:
            _forget_partial(base, ref.name)
            raise ModelLoadError(f"cannot load LoRA {ref.name!r} from {spec.location!r}: {exc}") from exc
        state.loras[ref.name] = None
        _recount(pipelines)
        log.info("loaded LoRA %s into model %s", ref.name, pipelines.spec.name)


def _forget_partial(base: Any, name: str) -> None:
    """Remove what a failed load left under ``name`` (if anything)."""
    try:
        if name in {n for names in base.get_list_adapters().values() for n in names}:
            base.delete_adapters(name)
    except Exception:  # nothing was loaded, or PEFT state is absent
        log.debug("nothing to remove after a failed load of LoRA %s", name)


def _control_pipe(pipelines: Any, pipe: Any, job_type: JobType, spec: ControlNetSpec) -> Any:
    state = _state(pipelines)
    key = (JobType(job_type).value, spec.name)
    if key in state.control_pipes:
        return state.control_pipes[key]
    if spec.name not in state.controlnets:
        from diffusers import ControlNetModel

        try:
            model = ControlNetModel.from_pretrained(spec.location, dtype=pipelines.base.dtype)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load ControlNet {spec.name!r} from {spec.location!r}: {exc}"
            ) from exc
        state.controlnets[spec.name] = model.to(pipelines.base.device)
        _recount(pipelines)
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    auto = {
        JobType.TXT2IMG: AutoPipelineForText2Image,
        JobType.IMG2IMG: AutoPipelineForImage2Image,
        JobType.INPAINT: AutoPipelineForInpainting,
    }[JobType(job_type)]
    try:
        control_pipe = auto.from_pipe(pipe, controlnet=state.controlnets[spec.name], dtype=pipe.dtype)
    except Exception as exc:
        raise ModelLoadError(
            f"ControlNet {spec.name!r} cannot drive model {pipelines.spec.name!r}: {exc}"
        ) from exc
    control_pipe.set_progress_bar_config(disable=True)
    state.control_pipes[key] = control_pipe
    return control_pipe


def _recount(pipelines: Any) -> None:
    """The model's weight bytes with its adapters, for the cache's budget."""
    from easel.worker.engine.pipelines import weight_bytes

    extra = sum(
        sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
        for m in _state(pipelines).controlnets.values()
    )
    pipelines.bytes = weight_bytes(pipelines.base) + extra


def loaded_loras(pipelines: Any) -> list[str]:
    """The LoRAs loaded into a model, least recently used first."""
    return list(_state(pipelines).loras)


@contextmanager
def lora_scope(pipe: Any, loras: Sequence[LoraRef]) -> Iterator[None]:
    """Within: ``loras`` active with their weights (LoRA off when there are none);
    after: LoRA off again."""
    loaded = _has_adapters(pipe)
    if loras:
        pipe.enable_lora()
        pipe.set_adapters([r.name for r in loras], adapter_weights=[r.weight for r in loras])
    elif loaded:
        pipe.disable_lora()
    try:
        yield
    finally:
        if loras or loaded:
            pipe.disable_lora()


def _has_adapters(pipe: Any) -> bool:
    getter = getattr(pipe, "get_list_adapters", None)
    if getter is None:
        return False
    try:
        return any(getter().values())
    except Exception:  # no PEFT state on this pipeline's modules
        return False


def control_kwargs(job_type: JobType, images: Sequence[Image.Image | None], scale: float) -> dict[str, Any]:
    """The ControlNet arguments of a pipeline call: txt2img pipelines take the control
    image as ``image``; img2img and inpaint as ``control_image``."""
    name = "image" if JobType(job_type) is JobType.TXT2IMG else "control_image"
    return {name: list(images), "controlnet_conditioning_scale": scale}


def prepare_control(image: Image.Image, preprocessor: str) -> Image.Image:
    """The control map of ``image``: itself (``none``) or its Canny edges (OpenCV)."""
    image = image.convert("RGB")
    if preprocessor == "none":
        return image
    if preprocessor == "canny":
        import cv2
        import numpy as np

        edges = cv2.Canny(np.asarray(image), CANNY_LOW, CANNY_HIGH)
        return Image.fromarray(np.stack([edges] * 3, axis=-1))
    raise ValueError(f"unknown ControlNet preprocessor {preprocessor!r}")
