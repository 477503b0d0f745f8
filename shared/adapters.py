"""LoRA adapters, ControlNets, VAEs, textual-inversion embeddings and prompt weighting:
the models-file tables, the job fields, and their validation (no torch: the web tier
imports this).

Models file::

    [loras.watercolor]
    location = "/models/loras/watercolor"   # a folder or .safetensors load_lora_weights reads
    models = ["sd15"]                        # the base models it fits

    [controlnets.edges]
    location = "/models/controlnet/canny"   # a diffusers ControlNetModel folder
    family = "sd"                           # or: fits every model of a family
    preprocessor = "canny"                  # or "none": the image is the control map itself

    [vaes.mse]
    location = "/models/VAE/vae-ft-mse-840000-ema-pruned.safetensors"  # or a diffusers folder
    family = "sd"

    [embeddings.easynegative]
    location = "/models/embeddings/easynegative.safetensors"  # A1111 .pt / .safetensors
    family = "sd"
    architecture = "sd1"                    # optional: not for SD 2.x models

Each entry fits the base models it lists (``models``), or else every model of its
``family`` (and ``architecture``, where both sides know theirs): ``AdapterSpec.fits``.

A job names them in ``loras`` (``[{"name": "watercolor", "weight": 0.8}]``, or
A1111-style ``<lora:watercolor:0.8>`` tags in the prompt, removed from its text),
``control`` (``{"model": "edges", "image": <base64>, "scale": 1.0}``) and ``vae``
(``"mse"``); all three are part of the batch key, and the job row keeps ``loras`` and
``control`` as canonical JSON text (``CanonicalJson``) so the claim's SQL equality works
on SQLite and PostgreSQL alike. An embedding is used A1111-style, by its name as a word
of the prompt or negative prompt (``mentioned_embeddings``); it belongs to its prompt,
not to the batch key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from easel.shared.families import FamilyName

MIN_LORA_WEIGHT = -2.0
MAX_LORA_WEIGHT = 2.0
MAX_CONTROL_SCALE = 2.0
CONTROLNET_FAMILIES = ("sd", "sdxl")
"""Families whose ControlNet pipelines Easel makes (``ControlNetModel`` with ``from_pipe``)."""
WEIGHTED_FAMILIES = ("sd", "sdxl")
"""Families whose text encoders Easel weights ``(word:1.3)`` prompts for (compel)."""
EMBEDDING_FAMILIES = ("sd", "sdxl")
"""Families whose CLIP text encoders Easel loads textual-inversion embeddings into."""

_LORA_TAG = re.compile(r"<lora:([^:<>]+?)(?::([^<>]*))?>", re.IGNORECASE)
_WEIGHTED = re.compile(r"\(([^()]*?):\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")


class AdapterSpec(BaseModel):
    """A models-file entry that fits some base models: the ones it lists, or else every
    model of its family (and architecture)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    location: str = Field(min_length=1)
    models: Annotated[tuple[str, ...], Field(min_length=1)] | None = Field(
        None, description="The base models it fits; when absent, every model of its family."
    )
    family: FamilyName | None = Field(None, description="sd, sdxl, sd3 or flux: the models it fits.")
    families: tuple[FamilyName, ...] = Field(
        (), description="Several families it fits alike (a 4-channel VAE: sd and sdxl), without family."
    )
    architecture: str | None = Field(
        None,
        max_length=32,
        description='The base it was made for ("sd1", "sd2", "sdxl", "sdxl-refiner", ...): '
        "an SD 2 adapter does not fit an SD 1 model.",
    )

    def fits(self, model_name: str, model_family: str, model_architecture: str | None = None) -> bool:
        """Whether it fits the model ``model_name`` of ``model_family``: one of its listed
        ``models`` when it lists them, else a model of its family, of its architecture
        when both it and the model know theirs."""
        if self.models is not None:
            return model_name in self.models
        allowed = (self.family,) if self.family is not None else self.families
        if str(model_family) not in {family.value for family in allowed}:
            return False
        return (
            self.architecture is None or model_architecture is None or self.architecture == model_architecture
        )

    def describe_fit(self) -> str:
        """What it fits, for messages: ``models a, b`` or ``sd models (v1)``."""
        if self.models is not None:
            return f"models {', '.join(self.models)}"
        where = f" ({self.architecture})" if self.architecture else ""
        allowed = (self.family,) if self.family is not None else self.families
        return f"{' and '.join(f.value for f in allowed) or 'no'} models{where}"


class LoraSpec(AdapterSpec):
    """``[loras.NAME]``: a LoRA that ``load_lora_weights`` reads (folder or .safetensors)."""


class ControlNetSpec(AdapterSpec):
    """``[controlnets.NAME]``: a diffusers ControlNetModel folder (or Hub id)."""

    preprocessor: Literal["none", "canny"] = "none"


class VaeSpec(AdapterSpec):
    """``[vaes.NAME]``: an ``AutoencoderKL`` to decode (and encode) with instead of the
    model's own: a single file in the original layout (.safetensors, .ckpt, .pt) or a
    diffusers folder."""


class EmbeddingSpec(AdapterSpec):
    """``[embeddings.NAME]``: a textual-inversion embedding (A1111 .pt / .safetensors, or
    diffusers' learned_embeds), used by its name as a word of the prompt."""


class AdapterTables(NamedTuple):
    """The adapter tables of a models file, by name."""

    loras: dict[str, LoraSpec]
    controlnets: dict[str, ControlNetSpec]
    vaes: dict[str, VaeSpec]
    embeddings: dict[str, EmbeddingSpec]


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


def read_tables(data: dict[str, Any], path: Path, model_names: set[str]) -> AdapterTables:
    """The ``[loras.*]``, ``[controlnets.*]``, ``[vaes.*]`` and ``[embeddings.*]`` tables
    of a parsed models file; ``ValueError`` naming the file, table and problem."""
    return AdapterTables(
        loras=_read_table(data, "loras", LoraSpec, path, model_names),
        controlnets=_read_table(data, "controlnets", ControlNetSpec, path, model_names),
        vaes=_read_table(data, "vaes", VaeSpec, path, model_names),
        embeddings=_read_table(data, "embeddings", EmbeddingSpec, path, model_names),
    )


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
        if spec.models is None and spec.family is None and not spec.families:
            families = " | ".join(f'"{f.value}"' for f in FamilyName)
            raise ValueError(
                f'{where}: say what it fits: models = ["NAME", ...] ([models.NAME] tables of the '
                f"file) or family = {families}"
            )
        unknown = [m for m in spec.models or () if m not in model_names]
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
    text, taken = _LORA_TAG.subn(take, prompt)
    while taken:  # a tag inside a tag (<lora:<lora:a:1>:1>): the outer one is a tag once the inner goes
        text, taken = _LORA_TAG.subn(take, text)
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


class Target(NamedTuple):
    """The model a job runs on, as adapters are fitted to it (``AdapterSpec.fits``)."""

    model: str
    family: str
    architecture: str | None = None

    def takes(self, spec: AdapterSpec) -> bool:
        return spec.fits(self.model, self.family, self.architecture)

    def fitting(self, known: dict[str, Spec]) -> list[str]:
        """The names in ``known`` that fit this model, sorted."""
        return sorted(name for name, spec in known.items() if self.takes(spec))


def _misfit(kind: str, name: str, spec: AdapterSpec, target: Target) -> str:
    return f"{kind} {name!r} does not fit model {target.model!r} (it fits {spec.describe_fit()})"


def lora_problems(
    loras: list[LoraRef], target: Target, known: dict[str, LoraSpec], max_count: int
) -> list[str]:
    """What is wrong with a job's ``loras`` for the ``target`` model (empty: nothing)."""
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
            listed = ", ".join(target.fitting(known)) or "none"
            problems.append(f"unknown LoRA {name!r} (LoRAs for model {target.model!r}: {listed})")
        elif not target.takes(spec):
            problems.append(_misfit("LoRA", name, spec, target))
    return problems


def control_problems(control: ControlRef, target: Target, known: dict[str, ControlNetSpec]) -> list[str]:
    """What is wrong with a job's ``control`` model for the ``target`` model (empty: nothing)."""
    spec = known.get(control.model)
    if spec is None:
        listed = ", ".join(target.fitting(known)) or "none"
        return [f"unknown ControlNet {control.model!r} (ControlNets for model {target.model!r}: {listed})"]
    if not target.takes(spec):
        return [_misfit("ControlNet", control.model, spec, target)]
    return []


def vae_problems(vae: str, target: Target, known: dict[str, VaeSpec]) -> list[str]:
    """What is wrong with a job's ``vae`` for the ``target`` model (empty: nothing)."""
    spec = known.get(vae)
    if spec is None:
        listed = ", ".join(target.fitting(known)) or "none"
        return [
            f"unknown VAE {vae!r} (VAEs for model {target.model!r}: {listed}; "
            f"leave vae out for the model's own)"
        ]
    if not target.takes(spec):
        return [_misfit("VAE", vae, spec, target)]
    return []


def _word_pattern(names: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for ``names`` as whole words (not inside a longer word), case-insensitive,
    the longest name first so that ``bad-hands-5`` wins over ``bad-hands``."""
    ordered = sorted({n for n in names if n}, key=lambda n: (-len(n), n))
    if not ordered:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, ordered)) + r")(?!\w)", re.IGNORECASE)


def mentioned_embeddings(text: str, names: Iterable[str]) -> list[str]:
    """The embedding ``names`` that ``text`` uses, in order of first use: each as a whole
    word (A1111-style, case-insensitive: ``easynegative`` in ``"easynegative, blurry"``,
    not in ``"noteasynegatives"``); where names overlap, the longest one at a place."""
    lowered = text.lower()
    candidates = [n for n in names if n and n.lower() in lowered]  # cheap before the regex
    pattern = _word_pattern(candidates)
    if pattern is None:
        return []
    by_lower: dict[str, str] = {}
    for name in sorted(candidates):
        by_lower.setdefault(name.lower(), name)
    return list(dict.fromkeys(by_lower[m.group(0).lower()] for m in pattern.finditer(text)))


def replace_embeddings(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each embedding name it uses (as ``mentioned_embeddings`` finds them)
    replaced by ``replacements[name]``; names not in ``replacements`` stay as they are."""
    lowered = text.lower()
    present = {n.lower(): r for n, r in replacements.items() if n and n.lower() in lowered}
    pattern = _word_pattern(present)
    if pattern is None:
        return text
    return pattern.sub(lambda m: present[m.group(0).lower()], text)


def embedding_problems(
    text: str, field: str, family: str, target: Target, known: dict[str, EmbeddingSpec]
) -> list[str]:
    """What is wrong with the embeddings that ``text`` (the job's ``field``) uses on the
    ``target`` model of ``family``: one that does not fit the model, any on a family
    without textual inversion. A word that names no embedding is just a word."""
    problems = []
    for name in mentioned_embeddings(text, known):
        spec = known[name]
        if family not in EMBEDDING_FAMILIES:
            problems.append(
                f"uses embedding {name!r}; textual-inversion embeddings work on "
                f"{', '.join(EMBEDDING_FAMILIES)} models, not {family} ones"
            )
        elif not target.takes(spec):
            listed = ", ".join(target.fitting(known)) or "none"
            problems.append(
                f"uses embedding {name!r} (its name is a word of the {field}), which does not fit model "
                f"{target.model!r} (it fits {spec.describe_fit()}; embeddings for this model: {listed})"
            )
    return problems


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
    vae: str | None = None,
    known_vaes: dict[str, VaeSpec] | None = None,
    known_embeddings: dict[str, EmbeddingSpec] | None = None,
    architecture: str | None = None,
) -> list[tuple[str, str, Any]]:
    """(field, message, value) for every problem of a job's LoRAs, ControlNet, VAE,
    embeddings and prompt weighting on ``model`` (of ``family`` and, where known,
    ``architecture``)."""
    target = Target(model, family, architecture)
    found: list[tuple[str, str, Any]] = []
    problems = lora_problems(loras, target, known_loras, max_loras)
    if problems:
        found.append(("loras", "; ".join(problems), [r.name for r in loras]))
    if control is not None:
        problems = control_problems(control, target, known_controlnets)
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
    if vae is not None:
        problems = vae_problems(vae, target, known_vaes or {})
        if problems:
            found.append(("vae", "; ".join(problems), vae))
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        problems = embedding_problems(text, name, family, target, known_embeddings or {})
        if problems:
            found.append((name, "; ".join(problems), text))
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
