"""LoRA adapters, ControlNets and prompt weighting: the models-file tables, the job
fields, and their validation (no torch: the web tier imports this).

Models file::

    [loras.watercolor]
    location = "/models/loras/watercolor"   # a folder or .safetensors load_lora_weights reads
    models = ["sd15"]                        # the base models it fits

    [controlnets.edges]
    location = "/models/controlnet/canny"   # a diffusers ControlNetModel folder
    models = ["sd15"]
    preprocessor = "canny"                  # or "none": the image is the control map itself

A job names them in ``loras`` (``[{"name": "watercolor", "weight": 0.8}]``, or
A1111-style ``<lora:watercolor:0.8>`` tags in the prompt, removed from its text) and
``control`` (``{"model": "edges", "image": <base64>, "scale": 1.0}``). Both are part of
the batch key; the job row keeps them as canonical JSON text (``CanonicalJson``) so the
claim's SQL equality works on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MIN_LORA_WEIGHT = -2.0
MAX_LORA_WEIGHT = 2.0
MAX_CONTROL_SCALE = 2.0
CONTROLNET_FAMILIES = ("sd", "sdxl")
"""Families whose ControlNet pipelines Easel makes (``ControlNetModel`` with ``from_pipe``)."""
WEIGHTED_FAMILIES = ("sd", "sdxl")
"""Families whose text encoders Easel weights ``(word:1.3)`` prompts for (compel)."""

_LORA_TAG = re.compile(r"<lora:([^:<>]+?)(?::([^<>]*))?>", re.IGNORECASE)
_WEIGHTED = re.compile(r"\(([^()]*?):\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")


class AdapterSpec(BaseModel):
    """A models-file entry that fits some base models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    location: str = Field(min_length=1)
    models: tuple[str, ...] = Field(min_length=1, description="The base models it fits.")


class LoraSpec(AdapterSpec):
    """``[loras.NAME]``: a LoRA that ``load_lora_weights`` reads (folder or .safetensors)."""


class ControlNetSpec(AdapterSpec):
    """``[controlnets.NAME]``: a diffusers ControlNetModel folder (or Hub id)."""

    preprocessor: Literal["none", "canny"] = "none"


class LoraRef(BaseModel):
    """One LoRA of a job and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, description="A [loras.NAME] of the models file.")
    weight: float = Field(
        1.0,
        ge=MIN_LORA_WEIGHT,
        le=MAX_LORA_WEIGHT,
        allow_inf_nan=False,
        description=f"Strength, {MIN_LORA_WEIGHT}..{MAX_LORA_WEIGHT}; 0 draws as without it.",
    )


class ControlRef(BaseModel):
    """The ControlNet of a job and its conditioning scale (the image is stored apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=128, description="A [controlnets.NAME] of the models file.")
    scale: float = Field(
        1.0,
        ge=0,
        le=MAX_CONTROL_SCALE,
        allow_inf_nan=False,
        description=f"Conditioning scale, 0..{MAX_CONTROL_SCALE}; 0 draws the plain image.",
    )


class ControlRequest(ControlRef):
    """The ``control`` field of a request: model, scale and the image (base64 in JSON)."""

    image: str | None = Field(None, description="The control image, base64 (multipart: control_image).")


def read_tables(
    data: dict[str, Any], path: Path, model_names: set[str]
) -> tuple[dict[str, LoraSpec], dict[str, ControlNetSpec]]:
    """The ``[loras.*]`` and ``[controlnets.*]`` tables of a parsed models file;
    ``ValueError`` naming the file, table and problem."""
    loras = _read_table(data, "loras", LoraSpec, path, model_names)
    controlnets = _read_table(data, "controlnets", ControlNetSpec, path, model_names)
    return loras, controlnets


Spec = TypeVar("Spec", bound=AdapterSpec)


def _read_table(
    data: dict[str, Any], table: str, cls: type[Spec], path: Path, model_names: set[str]
) -> dict[str, Spec]:
    specs: dict[str, Spec] = {}
    for name, entry in data.get(table, {}).items():
        where = f"models file {str(path)!r}, [{table}.{name}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a table")
        try:
            spec = cls(name=name, **entry)
        except ValidationError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        unknown = [m for m in spec.models if m not in model_names]
        if unknown:
            raise ValueError(f"{where}: models {unknown} are not [models.NAME] tables of the file")
        specs[name] = spec
    return specs


def split_lora_tags(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """``prompt`` without its ``<lora:NAME:WEIGHT>`` tags, and the tags as ``loras``
    entries (weight 1.0 when absent; an unreadable weight is kept as text, for the
    validation to name)."""
    found: list[dict[str, Any]] = []

    def take(match: re.Match[str]) -> str:
        entry: dict[str, Any] = {"name": match.group(1).strip()}
        weight = (match.group(2) or "").strip()
        if weight:
            try:
                entry["weight"] = float(weight)
            except ValueError:
                entry["weight"] = weight
        found.append(entry)
        return " "

    if "<" not in prompt:
        return prompt, []
    text = _LORA_TAG.sub(take, prompt)
    return " ".join(text.split()) if found else prompt, found


def has_weighting(text: str) -> bool:
    """Whether ``text`` uses ``(words:1.3)`` weighting: brackets whose content ends in
    ``:number``. Plain brackets, ``(word)``, are ordinary text."""
    return _WEIGHTED.search(text) is not None


def to_compel_syntax(text: str) -> str:
    """A1111's ``(words:1.3)`` as compel's ``(words)1.3``; everything else as it is
    (compel's own ``+``/``-`` syntax is left alone too)."""
    return _WEIGHTED.sub(lambda m: f"({m.group(1)}){float(m.group(2))}", text)


def strip_weighting(text: str) -> str:
    """``text`` with each ``(words:1.3)`` reduced to ``words``."""
    return _WEIGHTED.sub(lambda m: m.group(1), text)


def canonical_loras(loras: Any) -> list[dict[str, Any]] | None:
    """``loras`` as the row stores them: sorted by name, weights as floats; ``None`` for none."""
    if not loras:
        return None
    items = [LoraRef.model_validate(item) for item in loras]
    return [{"name": r.name, "weight": float(r.weight)} for r in sorted(items, key=lambda r: r.name)]


def canonical_control(control: Any) -> dict[str, Any] | None:
    """``control`` as the row stores it (model and scale; no image)."""
    if not control:
        return None
    ref = ControlRef.model_validate(
        {"model": control["model"], "scale": control.get("scale", 1.0)}
        if isinstance(control, dict)
        else {"model": control.model, "scale": control.scale}
    )
    return {"model": ref.model, "scale": float(ref.scale)}


def dumps_canonical(value: Any) -> str:
    """The one text form of a JSON value: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def lora_problems(loras: list[LoraRef], model: str, known: dict[str, LoraSpec], max_count: int) -> list[str]:
    """What is wrong with a job's ``loras`` for ``model`` (empty: nothing)."""
    problems = []
    if len(loras) > max_count:
        problems.append(f"{len(loras)} LoRAs; at most {max_count} per job (EASEL_MAX_LORAS_PER_JOB)")
    names = [r.name for r in loras]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"names {', '.join(duplicates)} more than once")
    for name in dict.fromkeys(names):
        spec = known.get(name)
        if spec is None:
            listed = ", ".join(sorted(known)) or "none"
            problems.append(f"unknown LoRA {name!r} (known: {listed})")
        elif model not in spec.models:
            problems.append(f"LoRA {name!r} does not fit model {model!r} (it fits: {', '.join(spec.models)})")
    return problems


def control_problems(control: ControlRef, model: str, known: dict[str, ControlNetSpec]) -> list[str]:
    """What is wrong with a job's ``control`` model for ``model`` (empty: nothing)."""
    spec = known.get(control.model)
    if spec is None:
        listed = ", ".join(sorted(known)) or "none"
        return [f"unknown ControlNet {control.model!r} (known: {listed})"]
    if model not in spec.models:
        return [
            f"ControlNet {control.model!r} does not fit model {model!r} (it fits: {', '.join(spec.models)})"
        ]
    return []


def lift_prompt_tags(data: dict[str, Any]) -> dict[str, Any]:
    """Raw request fields with ``<lora:...>`` tags moved from ``prompt`` to ``loras``
    (after any ``loras`` the request lists), and ``loras`` given as text (multipart:
    JSON, or ``name:weight,name``) parsed."""
    data = dict(data)
    loras = data.get("loras")
    if isinstance(loras, str):
        data["loras"] = loras = _loras_from_text(loras)
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        text, tags = split_lora_tags(prompt)
        if tags:
            data["prompt"] = text
            data["loras"] = [*(loras if isinstance(loras, list) else []), *tags]
    return data


def _loras_from_text(text: str) -> Any:
    text = text.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    entries: list[dict[str, Any]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        entries.append({"name": name.strip(), **({"weight": weight.strip()} if weight.strip() else {})})
    return entries


def adapter_details(
    *,
    model: str,
    family: str,
    prompt: str,
    negative_prompt: str,
    loras: list[LoraRef],
    control: ControlRef | None,
    control_image: bool,
    known_loras: dict[str, LoraSpec],
    known_controlnets: dict[str, ControlNetSpec],
    max_loras: int,
) -> list[tuple[str, str, Any]]:
    """(field, message, value) for every problem of a job's LoRAs, ControlNet and prompt
    weighting on ``model`` (of ``family``)."""
    found: list[tuple[str, str, Any]] = []
    problems = lora_problems(loras, model, known_loras, max_loras)
    if problems:
        found.append(("loras", "; ".join(problems), [r.name for r in loras]))
    if control is not None:
        problems = control_problems(control, model, known_controlnets)
        if family not in CONTROLNET_FAMILIES:
            problems.append(
                f"ControlNet is supported for {', '.join(CONTROLNET_FAMILIES)} models, not {family} ones"
            )
        if not control_image:
            problems.append("needs an image (control.image in JSON, control_image in multipart)")
        if problems:
            found.append(("control", "; ".join(problems), control.model))
    elif control_image:
        found.append(
            ("control", "a control image needs a control model (control.model / control_model)", None)
        )
    if family not in WEIGHTED_FAMILIES:
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if has_weighting(text):
                found.append(
                    (
                        name,
                        f"uses (words:weight) prompt weighting, which {family} models do not support "
                        f"(only {', '.join(WEIGHTED_FAMILIES)}); remove the weights",
                        text,
                    )
                )
    return found


def adapter_form_values(params: dict[str, Any]) -> dict[str, str]:
    """A job's ``loras`` and ``control`` as the HTML form's fields (``name:weight, ...``,
    ``control_model``, ``control_scale``), to fill the form from an earlier job."""
    values = {}
    if params.get("loras"):
        values["loras"] = ", ".join(f"{r['name']}:{r['weight']}" for r in params["loras"])
    if params.get("control"):
        values["control_model"] = params["control"]["model"]
        values["control_scale"] = str(params["control"]["scale"])
    return values
