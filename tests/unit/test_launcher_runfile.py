"""The run dir's pid file: a previous run's leftovers are stopped only when provably ours."""

from __future__ import annotations

import os
from pathlib import Path

from tollway.launcher import runfile
from tollway.launcher.runfile import PidEntry, clean_pid_file


def test_entries_round_trip_and_old_lines_parse() -> None:
    assert PidEntry.parse(PidEntry(12, 345, "router").line()) == PidEntry(12, 345, "router")
    assert PidEntry.parse("12\n") == PidEntry(12)
    assert PidEntry.parse(PidEntry(12, None, "x").line()) == PidEntry(12, None, "x")
    assert PidEntry.parse("garbage") is None


def test_cleaning_stops_only_live_matches_and_keeps_unprovable_live_lines(tmp_path: Path) -> None:
    (tmp_path / "pids").write_text(
        "10 500 router\n"  # alive, same start time: a leftover of the last run
        "11 600 cache\n"  # alive, other start time: the PID was reused by a stranger
        "12 700 redis\n"  # gone
        "13\n"  # a fixture's line, alive: cannot be proven ours, still needed by scripts/test.sh
        "14\n"  # a fixture's line, gone
        "junk\n"
    )
    running = {10: 500, 11: 999, 13: 42}
    stopped: list[int] = []
    result = clean_pid_file(tmp_path, ticks=running.get, terminate=stopped.append)
    assert stopped == [10]
    assert [e.name for e in result.stopped] == ["router"]
    assert (result.dropped, result.kept) == (4, 1)
    assert (tmp_path / "pids").read_text() == "13\n"


def test_cleaning_without_a_pid_file_creates_none(tmp_path: Path) -> None:
    assert clean_pid_file(tmp_path, ticks=lambda pid: None).stopped == []
    assert not (tmp_path / "pids").exists()


def test_this_process_has_a_start_time_and_a_dead_pid_has_none() -> None:
    assert isinstance(runfile.start_ticks(os.getpid()), int)
    assert runfile.start_ticks(2**22 + 7) is None


def test_a_live_launcher_is_recognised_by_pid_and_start_time(tmp_path: Path) -> None:
    runfile.write_status(tmp_path, {"launcher_pid": 77, "launcher_start": 5})
    assert runfile.live_launcher(tmp_path, ticks={77: 5}.get) == 77
    assert runfile.live_launcher(tmp_path, ticks={77: 6}.get) is None  # PID reused
    assert runfile.live_launcher(tmp_path, ticks=lambda pid: None) is None
    runfile.write_status(tmp_path, {"launcher_pid": os.getpid(), "launcher_start": runfile.start_ticks(os.getpid())})
    assert runfile.live_launcher(tmp_path) is None  # this process may start again in its own run dir
    (tmp_path / "status.json").write_text("{not json")
    assert runfile.live_launcher(tmp_path) is None
