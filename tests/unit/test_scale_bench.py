"""bench.scale's command line and figures, without filling a database."""

from __future__ import annotations

import pytest

from bench.scale import main, summarise


def test_help_and_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--postgres-jobs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--backends", "mysql"])
    assert exit_info.value.code == 2 and "--backends: mysql" in capsys.readouterr().err


def test_the_target_is_twice_the_empty_p50_or_25_ms_more() -> None:
    fast = summarise([10.0] * 5, [44.0] * 5)  # +34 ms on a 10 ms call: beyond both
    assert fast["p50_ratio"] == 4.4 and not fast["within_target"]
    assert summarise([10.0] * 5, [35.0] * 5)["within_target"]  # +25 ms
    assert summarise([100.0] * 5, [199.0] * 5)["within_target"]  # under 2x
    assert not summarise([100.0] * 5, [201.0] * 5)["within_target"]


def test_the_deep_queue_mode_checks_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--mode", "queue", "--owners", "0"])
    assert exit_info.value.code == 2 and "--owners: must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--mode", "queue", "--drain-work-ms", "-1"])
    assert exit_info.value.code == 2 and "--drain-work-ms" in capsys.readouterr().err
