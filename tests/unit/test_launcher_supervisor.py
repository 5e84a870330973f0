"""The launcher's restart policy and status table, as plain values: no processes, no clock."""

from __future__ import annotations

import pytest

from tollway.launcher.supervisor import Backoff, RestartPolicy, describe_exit, format_status


def delays(backoff: Backoff, uptimes: list[float]) -> list[float]:
    return [backoff.next_delay(u) for u in uptimes]


def test_a_crash_loop_doubles_the_delay_up_to_the_cap() -> None:
    policy = RestartPolicy(initial_delay_s=0.1, multiplier=2, max_delay_s=1.0, reset_after_s=30)
    assert delays(Backoff(policy), [0.5] * 7) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_a_child_that_stayed_up_long_enough_restarts_at_once_again() -> None:
    backoff = Backoff(RestartPolicy(initial_delay_s=0.1, multiplier=2, max_delay_s=10, reset_after_s=30))
    assert delays(backoff, [1, 1, 1]) == [0.1, 0.2, 0.4]
    assert backoff.next_delay(30.0) == 0.1  # up for reset_after_s: forgiven
    assert backoff.next_delay(29.9) == 0.2  # not long enough: the loop goes on


def test_an_endless_crash_loop_stays_at_the_cap_without_overflow() -> None:
    backoff = Backoff(RestartPolicy(initial_delay_s=0.001, multiplier=10, max_delay_s=5, reset_after_s=1))
    assert delays(backoff, [0.0] * 5000)[-1] == 5
    assert backoff.consecutive < 10


def test_multiplier_one_is_a_constant_delay() -> None:
    assert delays(Backoff(RestartPolicy(initial_delay_s=0.5, multiplier=1, max_delay_s=0.5)), [0, 0, 0]) == [0.5] * 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("initial_delay_s", -1.0, "RestartPolicy.initial_delay_s has value -1.0"),
        ("multiplier", 0.5, "RestartPolicy.multiplier has value 0.5"),
        ("max_delay_s", 0.01, "RestartPolicy.max_delay_s (0.01) is below initial_delay_s"),
        ("reset_after_s", float("nan"), "RestartPolicy.reset_after_s has value nan"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field_and_value(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RestartPolicy(**{field: value})


def test_exits_are_described_by_signal_name_or_code() -> None:
    assert describe_exit(-9) == "killed by SIGKILL (signal 9)"
    assert describe_exit(-15) == "killed by SIGTERM (signal 15)"
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(-200) == "killed by an unknown signal (signal 200)"
    assert describe_exit(None) == "running"


STATUS = {
    "launcher_pid": 100,
    "started_time": 1000.0,
    "stopped": False,
    "children": [
        {"name": "redis", "pid": 101, "state": "running", "restart_count": 0, "last_exit": "", "started_time": 1000.0},
        {
            "name": "router",
            "pid": 205,
            "state": "running",
            "restart_count": 2,
            "last_exit": "killed by SIGKILL (signal 9)",
            "started_time": 3590.0,
        },
        {"name": "cache", "pid": 103, "state": "backoff", "restart_count": 5, "last_exit": "exited with code 1"},
    ],
}


def test_status_prints_each_child_with_pid_uptime_restarts_and_last_exit() -> None:
    lines = format_status(STATUS, now=4600.0, alive=lambda pid: pid == 100).splitlines()
    assert lines[0] == "tollway up (pid 100) running for 1h00m00s"
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST", "EXIT"]
    assert lines[2].split() == ["redis", "running", "101", "1h00m00s", "0", "-"]
    assert lines[3].split()[:5] == ["router", "running", "205", "16m50s", "2"]
    assert lines[3].endswith("killed by SIGKILL (signal 9)")
    assert lines[4].split()[:5] == ["cache", "backoff", "103", "-", "5"]


def test_status_says_when_the_launcher_is_gone_or_stopped() -> None:
    gone = format_status(STATUS, now=4600.0, alive=lambda pid: False)
    assert gone.startswith("tollway up (pid 100) is gone without stopping its children")
    stopped = format_status({**STATUS, "stopped": True}, now=4600.0, alive=lambda pid: True)
    assert stopped.startswith("tollway up (pid 100) has stopped")
