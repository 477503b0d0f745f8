"""A Python client for Easel's REST API. Needs only ``requests`` (no torch, no Flask).

    from easel.client import EaselClient

    client = EaselClient("http://127.0.0.1:8000", api_key="easel_...")
    job = client.submit("a lighthouse at dusk", width=256, height=256, seed=42)
    job = client.wait(job["id"], on_progress=lambda j: print(j["progress"]["fraction"]))
    for event, job in client.events(job["id"]): ...      # the job's event stream
    paths = client.download(job, "out/")

The URL and key default to ``EASEL_API_URL`` and ``EASEL_API_KEY``. Responses of
429 and 503 are retried with backoff, honouring ``Retry-After``; other errors raise
``EaselApiError`` carrying the error shape. ``wait`` follows the job's event stream
(``GET /api/v1/jobs/<id>/events``), resuming with ``Last-Event-ID`` when the connection
drops, and polls when no stream can be had (429: the key's streams are all open).
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
ImageInput = str | Path | bytes


class EaselApiError(Exception):
    """An error answer: ``status``, ``code``, ``message`` and ``details`` of the error shape."""

    def __init__(self, status: int, body: dict[str, Any] | None, text: str = "") -> None:
        error = (body or {}).get("error") or {}
        self.status = status
        self.code: str = error.get("code", "http_error")
        self.message: str = error.get("message", text[:500] or f"HTTP {status}")
        self.details: list[dict[str, Any]] = error.get("details", [])
        super().__init__(f"{status} {self.code}: {self.message}")


class JobTimeout(TimeoutError):
    """``wait`` gave up before the job finished."""


class EaselClient:
    """Typed calls for submit, get, list, cancel, wait and download."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        session: requests.Session | None = None,
    ) -> None:
        self.url = (url or os.environ.get("EASEL_API_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key if api_key is not None else os.environ.get("EASEL_API_KEY")
        self.timeout = timeout
        self.max_retries = max_retries
        self.last_event_id: str | None = None  # of the last event ``events`` yielded: resume from it
        self.http = session or requests.Session()
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"

    # -- transport -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.url}{path}"
        for attempt in range(self.max_retries + 1):
            response = self.http.request(method, url, timeout=self.timeout, **kwargs)
            if response.status_code not in (429, 503) or attempt == self.max_retries:
                break
            time.sleep(_retry_delay(response, attempt))
        _raise_for_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object a successful request answers with."""
        body: dict[str, Any] = self._request(method, path, **kwargs).json()
        return body

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        prompt: str | None,
        *,
        type: str = "txt2img",
        image: ImageInput | None = None,
        mask: ImageInput | None = None,
        idempotency_key: str | None = None,
        control_image: ImageInput | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Submit a job; ``params`` are the REST fields (width, steps, seed, ...); ``prompt``
        ``None`` for kinds without one (upscale).

        ``image``, ``mask`` and ``control_image`` (the ControlNet's, with ``control_model``
        and ``control_scale`` in ``params``) take a path or bytes and go up as multipart files.
        """
        fields = {"type": type, **{k: v for k, v in {"prompt": prompt, **params}.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        files = {
            name: (f"{name}.png", _read(value))
            for name, value in (("image", image), ("mask", mask), ("control_image", control_image))
            if value is not None
        }
        if files:
            data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
            return self._json("POST", "/api/v1/jobs", data=data, files=files, headers=headers)
        return self._json("POST", "/api/v1/jobs", json=fields, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/jobs/{job_id}")

    def list(
        self,
        status: str | None = None,
        type: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page: ``{"jobs": [...], "next_cursor": ...}``, newest first."""
        query = {
            k: v
            for k, v in {"status": status, "type": type, "limit": limit, "cursor": cursor}.items()
            if v is not None
        }
        return self._json("GET", "/api/v1/jobs", params=query)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/jobs/{job_id}/cancel")

    def events(
        self, job_id: str, last_event_id: str | None = None, read_timeout: float = 60.0
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's event stream as ``(event, job object)``: ``status`` and ``progress``
        events, then ``done`` with the finished job, after which it ends.

        Raises ``EaselApiError`` when the stream is refused (429: too many open streams
        for this key) and ``requests.RequestException`` when the connection drops (read
        ``last_event_id`` of this iterator's events to resume). ``read_timeout`` must
        exceed the server's heartbeat (15 s by default)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        url = f"{self.url}/api/v1/jobs/{job_id}/events"
        with self.http.get(
            url, headers=headers, stream=True, timeout=(self.timeout, read_timeout)
        ) as response:
            if response.status_code == 204:
                return  # the stream had already ended for this Last-Event-ID
            _raise_for_error(response)
            for event, event_id, data in _parse_events(response.iter_lines(decode_unicode=True)):
                self.last_event_id = event_id
                yield event, json.loads(data)
                if event == "done":
                    return

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        stream: bool = True,
    ) -> dict[str, Any]:
        """Wait until the job finishes; ``on_progress`` gets each changed job object.

        Follows the event stream (``stream``), reconnecting with ``Last-Event-ID`` up to
        three times in a row when the connection drops; polls every ``interval`` seconds
        when no stream can be had or the server has none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream:
            job = self._wait_streaming(job_id, deadline, timeout, on_progress)
            if job is not None:
                return job
        last: dict[str, Any] | None = None
        while True:
            job = self.get(job_id)
            if on_progress is not None and (
                last is None or job["progress"] != last["progress"] or job["status"] != last["status"]
            ):
                on_progress(job)
            last = job
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} is still {job['status']} after {timeout}s")
            time.sleep(interval)

    def _wait_streaming(
        self,
        job_id: str,
        deadline: float | None,
        timeout: float | None,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any] | None:
        """The finished job from the event stream, or ``None`` to fall back to polling."""
        self.last_event_id, drops = None, 0
        while drops <= 3:
            try:
                for event, job in self.events(job_id, self.last_event_id, read_timeout=60.0):
                    drops = 0
                    if on_progress is not None:
                        on_progress(job)
                    if event == "done":
                        return job
                    if deadline is not None and time.monotonic() >= deadline:
                        raise JobTimeout(f"job {job_id} is still {job['status']} after {timeout}s")
                drops += 1  # the stream ended before "done" (a server restart): resume
            except EaselApiError as exc:
                if exc.status == 404:
                    self.get(job_id)  # no such job raises; a server without event streams polls
                return None  # 429 (this key's streams are all open) and the like: poll instead
            except requests.RequestException:
                drops += 1
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} did not finish within {timeout}s")
            time.sleep(min(2.0, 0.25 * 2**drops))
        return None

    def download(self, job: dict[str, Any], directory: str | Path) -> builtins.list[Path]:
        """Save every output of a finished job as ``<id>-<index>.png``; the paths written."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for output in job["outputs"]:
            path = folder / f"{job['id']}-{output['index']}.png"
            path.write_bytes(self._request("GET", output["url"]).content)
            paths.append(path)
        return paths


def _parse_events(lines: Iterator[str]) -> Iterator[tuple[str, str, str]]:
    """``(event, id, data)`` of each event of a ``text/event-stream``; comments skipped."""
    event, event_id = "message", ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event, event_id, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # a heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def _read(value: ImageInput) -> bytes:
    if isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


def _raise_for_error(response: requests.Response) -> None:
    """Raise ``EaselApiError`` for a 4xx or 5xx answer, with its JSON body where it has one."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        raise EaselApiError(response.status_code, body, response.text)


def _retry_delay(response: requests.Response, attempt: int) -> float:
    """``Retry-After`` seconds when given (capped at 60), else 0.5, 1, 2, ... seconds."""
    header = response.headers.get("Retry-After", "")
    if header.isdigit():
        return min(60.0, float(header))
    return min(30.0, 0.5 * 2.0**attempt)


def encode_image(value: ImageInput) -> str:
    """Base64 of an image path or bytes, for the JSON API's ``image`` / ``mask``."""
    return base64.b64encode(_read(value)).decode()
