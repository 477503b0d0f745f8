"""The job forms offer the LoRAs, VAEs, ControlNets and embeddings that fit the selected
model: server-rendered for it (no script needed), and per model as JSON for
static/form.js (tests/e2e/test_browser.py drives that in chromium)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from easel.shared.settings import Settings
from tests.factories import b64, gradient, migrated_settings

MODELS = """
[models.tiny-sd]
source = "tiny"

[models.other]
source = "tiny"

[models.flowy]
source = "directory"
location = "{flux_dir}"
family = "flux"

[loras.ink]
location = "/nowhere/ink"
models = ["tiny-sd"]

[loras.wash]
location = "/nowhere/wash.safetensors"
models = ["tiny-sd"]

[vaes.kl]
location = "/nowhere/kl.safetensors"
models = ["tiny-sd"]

[controlnets.edges]
location = "/nowhere/edges"
models = ["tiny-sd"]

[controlnets.flux-edges]
location = "/nowhere/flux-edges"
models = ["flowy"]

[embeddings.inkstyle]
location = "/nowhere/inkstyle.pt"
models = ["tiny-sd"]
"""
VOID = frozenset({"input", "meta", "link", "br", "img", "hr"})
NOTHING: dict[str, list[str]] = {"loras": [], "controlnets": [], "vaes": [], "embeddings": []}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    models = tmp_path / "models.toml"
    models.write_text(MODELS.format(flux_dir=tmp_path / "flux"))
    return migrated_settings(home=tmp_path, auth_enabled=False, models_file=models, default_model="tiny-sd")


@pytest.fixture
def app(settings: Settings) -> Flask:
    from easel.web import create_app

    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = False  # CSRF has its own tests (test_security.py)
    return app


class Form(HTMLParser):
    """What a rendered form offers: each select's options (value, label, selected), the
    text of elements by id, which ids are hidden, and the #adapter-fits JSON."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.options: dict[str, list[tuple[str, str, bool]]] = {}
        self.text: dict[str, str] = {}
        self.hidden: set[str] = set()
        self.attrs_of: dict[str, dict[str, str | None]] = {}
        self._select: str | None = None
        self._option: tuple[str, bool] | None = None
        self._open: list[tuple[str, str | None]] = []  # the open elements: tag, id
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if (name := found.get("name")) is not None:
            self.attrs_of[name] = found
        if tag == "select":
            self._select = found.get("name") or ""
            self.options[self._select] = []
        elif tag == "option":
            self._option = (found.get("value") or "", "selected" in found)
        element = found.get("id")
        if element:
            self.attrs_of[element] = found
            self.text[element] = ""
            if "hidden" in found:
                self.hidden.add(element)
        if tag not in VOID:
            self._open.append((tag, element))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        if self._option is not None and self._select is not None:
            value, selected = self._option
            self.options[self._select].append((value, data.strip(), selected))
            self._option = None
        for _, element in self._open:
            if element:
                self.text[element] += data

    def selected(self, select: str) -> str:
        """The value a browser submits: the selected option's, else the first one's."""
        options = self.options[select]
        return next((value for value, _, chosen in options if chosen), options[0][0])

    def offered(self, select: str) -> list[str]:
        return [value for value, _, _ in self.options[select] if value]

    @property
    def fits(self) -> Any:
        return json.loads(self.text["adapter-fits"])


def form(client: FlaskClient, url: str = "/") -> Form:
    response = client.get(url)
    assert response.status_code == 200
    return Form(response.get_data(as_text=True))


def post(client: FlaskClient, **fields: Any) -> Any:
    return client.post("/api/v1/jobs", json={"prompt": "a box", "width": 64, "height": 64, **fields})


@pytest.mark.parametrize("url", ["/", "/edit"])
def test_the_form_offers_what_fits_the_default_model(client: FlaskClient, url: str) -> None:
    page = form(client, url)
    assert page.selected("model") == "tiny-sd"
    assert page.offered("vae") == ["kl"] and page.selected("vae") == ""  # empty: the model's own
    assert page.options["vae"][0][1] == "the model's own"
    assert page.offered("control_model") == ["edges"] and page.selected("control_model") == ""
    assert {"vae-none", "control-none", "lora-picker"} <= page.hidden  # the picker: shown by script
    assert "embeddings-hint" not in page.hidden
    assert "LoRAs that fit this model: ink, wash" in page.text["loras-hint"]  # for the text field
    assert "Embeddings you can use by name: inkstyle" in " ".join(page.text["embeddings-hint"].split())
    assert page.attrs_of["prompt"]["aria-describedby"] == "embeddings-hint"
    assert page.attrs_of["loras"]["aria-describedby"] == "loras-hint"
    assert page.attrs_of["adapter-fits"]["type"] == "application/json"
    assert page.attrs_of["adapter-fits"]["data-model"] == "tiny-sd"
    assert page.fits == {
        "tiny-sd": {
            "loras": ["ink", "wash"],
            "controlnets": ["edges"],
            "vaes": ["kl"],
            "embeddings": ["inkstyle"],
        },
        "other": NOTHING,
        "flowy": NOTHING,  # flux-edges fits flowy, but Easel runs no ControlNet on flux: not offered
    }
    script = client.get("/static/form.js")
    assert script.status_code == 200 and b"adapter-fits" in script.data
    assert "form.js" in client.get(url).get_data(as_text=True)


def test_a_model_nothing_fits_says_so(client: FlaskClient) -> None:
    job = post(client, model="other").get_json()
    page = form(client, f"/?from={job['id']}")
    assert page.selected("model") == "other"
    assert page.offered("vae") == [] and page.offered("control_model") == []
    assert "vae-none" not in page.hidden and "control-none" not in page.hidden
    assert page.text["vae-none"] == "none fit this model"
    assert page.attrs_of["vae"]["aria-describedby"] == "vae-none"
    assert "No LoRAs fit this model." in page.text["loras-hint"]
    assert "embeddings-hint" in page.hidden and "aria-describedby" not in page.attrs_of["prompt"]
    assert page.attrs_of["adapter-fits"]["data-model"] == "other"


def test_from_an_earlier_job_its_loras_vae_and_control_are_preselected(client: FlaskClient) -> None:
    job = post(
        client,
        loras=[{"name": "wash", "weight": 0.5}, {"name": "ink", "weight": 1.25}],
        vae="kl",
        control={"model": "edges", "image": b64(gradient()), "scale": 0.6},
    )
    assert job.status_code == 202, job.get_json()
    for url in (f"/?from={job.get_json()['id']}", f"/edit?from={job.get_json()['id']}"):
        page = form(client, url)
        assert page.attrs_of["loras"]["value"] == "ink:1.25, wash:0.5"
        assert page.selected("vae") == "kl" and page.selected("control_model") == "edges"
        assert page.attrs_of["control_scale"]["value"] == "0.6"


def test_a_refused_form_keeps_a_choice_that_does_not_fit_and_names_the_field(client: FlaskClient) -> None:
    response = client.post(
        "/", data={"prompt": "a box", "model": "other", "vae": "kl", "width": "64", "height": "64"}
    )
    assert response.status_code == 422
    page = Form(response.get_data(as_text=True))
    assert page.selected("model") == "other"
    assert ("kl", "kl (does not fit this model)", True) in page.options["vae"]
    assert "does not fit model 'other'" in page.text["vae-error"]


def test_the_picked_loras_and_vae_go_through_the_text_form(client: FlaskClient, settings: Settings) -> None:
    response = client.post(
        "/",
        data={"prompt": "a box", "loras": "ink:0.5, wash", "vae": "kl", "control_model": "", "width": "64"},
    )
    assert response.status_code == 303
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    params = client.get(f"/api/v1/jobs/{job_id}").get_json()["params"]
    assert params["loras"] == [{"name": "ink", "weight": 0.5}, {"name": "wash", "weight": 1.0}]
    assert params["vae"] == "kl" and "control" not in params
