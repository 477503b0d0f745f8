from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from easel.shared.settings import Settings


def test_embedded_defaults_need_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path}/easel.db"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/broker.db"
    assert settings.storage_url == (tmp_path / "outputs").as_uri()
    assert settings.default_model is None  # the registry chooses: tiny-sd among the built-ins
    assert settings.offline is True


def test_urls_switch_to_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_DATABASE_URL", "postgresql+psycopg://u@db/easel")
    monkeypatch.setenv("EASEL_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("EASEL_STORAGE_URL", "s3://bucket/prefix")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@db/easel"
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.storage_url == "s3://bucket/prefix"


def test_worker_models_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_WORKER_MODELS", " a, b ,,")
    assert Settings().served_models == ["a", "b"]


def test_time_limits_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match=r"task_time_limit \(10\) must exceed"):
        Settings(task_soft_time_limit=10, task_time_limit=10)


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_PORT", "eighty")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def _boot_together(settings: Settings, count: int) -> tuple[list[str], list[BaseException]]:
    """``session_secret`` called by ``count`` threads released at the same moment."""
    import threading

    start = threading.Barrier(count)
    secrets: list[str] = []
    errors: list[BaseException] = []

    def boot() -> None:
        start.wait()
        try:
            secrets.append(settings.session_secret())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return secrets, errors


def test_web_processes_starting_together_agree_on_one_session_secret(tmp_path: Path) -> None:
    for attempt in range(10):
        home = tmp_path / str(attempt)
        secrets, errors = _boot_together(Settings(home=home), 8)
        assert not errors and len(secrets) == 8 and len(set(secrets)) == 1 and len(secrets[0]) > 40
        assert [p.name for p in home.iterdir()] == ["secret_key"]  # no drafts left behind
