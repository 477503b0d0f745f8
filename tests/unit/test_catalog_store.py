"""The models catalog in the database: workers publish what their folders hold, web
processes read it back and validate against it (shared/catalog_store.py,
shared/catalog_registry.py, worker/catalog_sync.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from easel.shared.catalog_registry import with_catalog
from easel.shared.catalog_store import (
    CatalogRecord,
    CatalogView,
    latest_publish,
    publish,
    read_catalog,
    request_rescan,
    rescan_requested_at,
    source_of,
)
from easel.shared.db import session_scope
from easel.shared.errors import UnknownModel
from easel.shared.models import JobType
from easel.shared.registry import ModelSource, Registry, load_registry
from easel.shared.settings import Settings
from tests.factories import migrated_settings, worker_row


def record(kind: str, name: str, family: str | None = "sd", **fields: Any) -> CatalogRecord:
    values: dict[str, Any] = {
        "architecture": "sd1" if family == "sd" else None,
        "format": "safetensors",
        "size_bytes": 100,
        "fingerprint": f"fp-{name}",
        **fields,
    }
    return CatalogRecord(kind=kind, name=name, family=family, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return migrated_settings(home=tmp_path)


def sessions(settings: Settings) -> Any:
    return lambda: session_scope(settings.database_url)


def test_a_publish_replaces_the_workers_rows_and_reads_back_merged(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        session.add_all([worker_row("w1", []), worker_row("w2", [])])
    with session_scope(settings.database_url) as session:
        publish(session, "w1", "src", [record("checkpoint", "a"), record("lora", "ink")], lost_after=30)
        publish(session, "w2", "src", [record("checkpoint", "a")], lost_after=30)
    with session_scope(settings.database_url) as session:
        publish(session, "w1", "src", [record("checkpoint", "a"), record("checkpoint", "b")], lost_after=30)
    with session_scope(settings.database_url) as session:
        found = {(r.kind, r.name): r.workers for r in read_catalog(session)}
    assert found == {("checkpoint", "a"): ("w1", "w2"), ("checkpoint", "b"): ("w1",)}


def test_a_new_worker_takes_over_what_stopped_workers_of_its_folders_left(settings: Settings) -> None:
    """A pod replaced by another (scale to zero and back): the old rows stay until a worker
    of the same folders publishes, so a file removed meanwhile leaves the catalog."""
    with session_scope(settings.database_url) as session:
        session.add_all([worker_row("old", [], age=3600), worker_row("other", [], age=3600)])
        publish(session, "old", "src", [record("checkpoint", "gone")], lost_after=30)
        publish(session, "other", "elsewhere", [record("checkpoint", "theirs")], lost_after=30)
    with session_scope(settings.database_url) as session:
        assert {r.name for r in read_catalog(session)} == {"gone", "theirs"}  # scaled to zero: kept
        publish(session, "new", "src", [record("checkpoint", "kept")], lost_after=30)
    with session_scope(settings.database_url) as session:
        assert {r.name for r in read_catalog(session)} == {"kept", "theirs"}


def test_source_names_the_folders(tmp_path: Path) -> None:
    assert source_of([tmp_path / "a", tmp_path / "b"]) == source_of([tmp_path / "a", tmp_path / "b"])
    assert source_of([tmp_path / "a"]) != source_of([tmp_path / "b"])


def test_found_files_join_the_registry_and_the_models_file_wins(tmp_path: Path) -> None:
    base = load_registry(Settings(home=tmp_path))
    records = [
        record("checkpoint", "mine"),
        record("checkpoint", "tiny-sd"),  # the built-in of that name wins
        record("checkpoint", "fill", details={"architecture": "inpainting"}),
        record("checkpoint", "sd2", architecture="sd2", details={"architecture": "v2"}),
        record("checkpoint", "refiner", family="sdxl", details={"architecture": "xl_refiner"}),
        record("checkpoint", "big3", family="sd3"),  # no single-file SD3: left out, with why
        record("checkpoint", "broken", available=False, reason="partial copy"),
        record("lora", "ink"),
        record("vae", "mse", family=None, details={"families": ["sd", "sdxl"]}),
        record("embedding", "easyneg"),
        record("controlnet", "edges"),
    ]
    registry, skipped = with_catalog(base, records)
    assert registry.names() == ["demo-shapes", "fill", "mine", "refiner", "sd2", "tiny-sd"]
    assert registry.get("tiny-sd").source is ModelSource.TINY
    assert registry.get("mine").source is ModelSource.CATALOG and registry.get("mine").architecture == "sd1"
    assert registry.get("fill").inpainting and registry.get("fill").types == (JobType.INPAINT,)
    assert registry.get("sd2").default_size == 768
    assert registry.get("refiner").types == (JobType.IMG2IMG,)
    ink = registry.loras["ink"]
    assert ink.fits("mine", "sd", "sd1") and not ink.fits("sd2", "sd", "sd2")
    assert registry.vaes["mse"].fits("mine", "sd", "sd1") and registry.vaes["mse"].fits("r", "sdxl")
    assert set(registry.vaes) == {"mse"} and set(registry.embeddings) == {"easyneg"}
    assert set(registry.controlnets) == {"edges"}
    assert any("big3" in why and "single-file" in why for why in skipped), skipped
    assert any("'broken': partial copy" in why for why in skipped), skipped


def test_a_worker_record_points_at_its_file() -> None:
    base = Registry([], None, strict=False)
    registry, _ = with_catalog(base, [record("checkpoint", "m", location="/models/m.safetensors")])
    spec = registry.get("m")
    assert (spec.source, spec.location) == (ModelSource.SINGLE_FILE, "/models/m.safetensors")
    assert registry.default == "m"  # no demo-shapes: the first by name


def test_a_web_process_sees_a_publish_at_its_next_look(settings: Settings) -> None:
    seen: list[list[str]] = []
    now = [0.0]
    view = CatalogView(sessions(settings), lambda rs: seen.append([r.name for r in rs]), 2.0, lambda: now[0])
    assert view.refresh() is False and seen == []  # nothing published yet
    with session_scope(settings.database_url) as session:
        publish(session, "w", "src", [record("checkpoint", "a")], lost_after=30)
    now[0] = 1.0
    assert view.refresh() is False  # not due yet
    now[0] = 2.5
    assert view.refresh() is True and seen == [["a"]]
    now[0] = 5.0
    assert view.refresh() is False  # nothing new: one lookup, no read
    assert view.refresh(force=True) is False


def test_rescan_requests_are_recorded(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        assert rescan_requested_at(session) is None
        first = request_rescan(session)
    with session_scope(settings.database_url) as session:
        assert rescan_requested_at(session) == first
        second = request_rescan(session)
    with session_scope(settings.database_url) as session:
        assert rescan_requested_at(session) == second > first


class FakeScanner:
    """What the folders hold, as a scanner would report it (the real one is tested in
    test_catalog.py)."""

    def __init__(self) -> None:
        self.records: list[CatalogRecord] = []
        self.scans = 0

    def __call__(self, roots: Sequence[Path], state: Any) -> tuple[list[CatalogRecord], Any]:
        self.scans += 1
        return list(self.records), state


def test_a_worker_publishes_only_changes_and_serves_what_it_found(settings: Settings, tmp_path: Path) -> None:
    from easel.worker.catalog_sync import CatalogSync

    scanner, applied = FakeScanner(), []
    base = Registry([], None, strict=False)
    sync = CatalogSync(
        [tmp_path],
        base,
        sessions(settings),
        "w",
        lambda registry: applied.append(registry.names()),
        scanner=scanner,
        interval=30,
        lost_after=30,
    )
    scanner.records = [record("checkpoint", "a", location=str(tmp_path / "a.safetensors"))]
    sync.scan()
    with session_scope(settings.database_url) as session:
        first = [(r.name, r.workers) for r in read_catalog(session)]
        stamp = latest_publish(session)
    sync.scan()  # unchanged: no write
    with session_scope(settings.database_url) as session:
        assert latest_publish(session) == stamp
    scanner.records.append(record("checkpoint", "b", location=str(tmp_path / "b.safetensors")))
    sync.scan()
    with session_scope(settings.database_url) as session:
        assert sorted(r.name for r in read_catalog(session)) == ["a", "b"]
    assert first == [("a", ("w",))] and applied == [["a"], ["a"], ["a", "b"]]


def test_an_empty_models_folder_serves_nothing_rather_than_everything(tmp_path: Path) -> None:
    from easel.worker.process import NO_MODELS, served_models

    settings = Settings(home=tmp_path, models_dir=str(tmp_path))
    empty = Registry([], None, strict=False)
    assert served_models(settings, empty) == []
    with pytest.raises(UnknownModel):
        empty.get(NO_MODELS)


def test_easel_models_rescan_waits_for_a_worker_and_lists_what_it_found(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`easel models rescan` asks, a worker's rescan thread answers, `easel models list` shows it."""
    from click.testing import CliRunner

    from easel.cli import main
    from easel.shared.settings import get_settings
    from easel.worker.catalog_sync import CatalogSync

    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    get_settings.cache_clear()
    scanner = FakeScanner()
    scanner.records = [record("checkpoint", "a"), record("lora", "bad", available=False, reason="a LoHa")]
    sync = CatalogSync(
        [tmp_path],
        Registry([], None, strict=False),
        sessions(settings),
        "w",
        lambda registry: None,
        scanner=scanner,
        interval=0,  # only when asked
        lost_after=30,
    )
    sync.scan()
    sync.start()
    try:
        scans = scanner.scans
        result = CliRunner().invoke(main, ["models", "rescan", "--wait", "20"])
        assert result.exit_code == 0, result.output
        assert "2 files, 1 available, 1 unavailable" in result.output
        assert scanner.scans > scans
    finally:
        sync.stop()
        get_settings.cache_clear()
    listed = CliRunner().invoke(main, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "unavailable: a LoHa" in listed.output and "checkpoint" in listed.output


def test_easel_models_rescan_says_when_no_worker_answers(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from easel.cli import main
    from easel.shared.settings import get_settings

    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["models", "rescan", "--wait", "0.5"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0 and "no worker rescanned within 0.5s" in result.output
