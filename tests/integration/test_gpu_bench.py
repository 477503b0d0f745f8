"""bench/gpu.py, the GPU check, run with --tiny on the CPU: it must work when GPU time comes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.gpu import main
from bench.processes import free_port

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_the_tiny_gpu_check_times_bare_and_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("EASEL_")]:
        monkeypatch.delenv(name)  # the stack gets the script's settings alone
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    args = ["--tiny", "--stacks", "eager+EASEL_PREVIEW_INTERVAL_SECONDS=0", "--jobs", "8", "--serial", "1"]
    main([*args, "--no-odd-batches", "--port", str(free_port()), "--model-dir", str(tmp_path / "model")])
    figures = json.loads((tmp_path / "out" / "result.json").read_text())
    assert figures == json.loads(capsys.readouterr().out)
    assert figures["bare_batched_img_s"] > 0 and figures["bare_serial_img_s"] > 0
    first_calls = figures["bare_first_and_second_call_seconds"]
    assert list(first_calls) == ["4", "1", "2", "3"]  # the largest first: it pays the process's first call
    assert all(len(pair) == 2 and min(pair) > 0 for pair in first_calls.values())
    stack = figures["eager+EASEL_PREVIEW_INTERVAL_SECONDS=0"]
    assert "stopped" not in stack, stack
    assert stack["statuses"] == ["succeeded"] and stack["e2e_img_s"] > 0
    assert sum(batch["size"] for batch in stack["batches"]) == 8
    assert stack["recompiles_after_warm_up"] == 0 and stack["error_lines"] == []
    assert "easel.run: started worker" in (tmp_path / "out" / "stack-1.log").read_text()
