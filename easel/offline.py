"""Offline means offline: the Hugging Face libraries' own switches, set before they read them.

huggingface_hub reads ``HF_HUB_OFFLINE`` once, when it is first imported (diffusers and
transformers import it), so a switch set later, when a model loads, is ignored and the
library asks the Hub anyway. ``easel/__init__.py`` calls ``apply_offline`` first thing, so
every Easel process (web, worker, webhooks, the CLI) sets the switches before any import
can read them. ``EASEL_OFFLINE`` is read here from the environment, as pydantic-settings
reads it for ``Settings.offline`` (true unless one of its false words).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

_FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})  # pydantic's false strings
HUB_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
"""The variables the Hugging Face libraries read to refuse network access."""


def offline_requested(environ: MutableMapping[str, str]) -> bool:
    """Whether ``EASEL_OFFLINE`` (default true) asks for no hub access."""
    return environ.get("EASEL_OFFLINE", "true").strip().lower() not in _FALSE_WORDS


def apply_offline(environ: MutableMapping[str, str] | None = None) -> bool:
    """Set the hub libraries' offline switches when ``EASEL_OFFLINE`` asks for it (and
    telemetry off); tell an already imported huggingface_hub too. Whether it did."""
    environ = os.environ if environ is None else environ
    if not offline_requested(environ):
        return False
    for name in HUB_SWITCHES:
        environ[name] = "1"
    environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # imported before Easel: it read the switch already
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
    return True
