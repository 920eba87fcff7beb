"""Unit tests of streams/supervise.py: the consumer loop's restart/health policy and the
throttled connectivity warning (no Kafka needed: the policy is plain state)."""

from __future__ import annotations

import logging

import pytest
import structlog

from push.logs import configure_logging
from streams.supervise import Restarts, ThrottledWarning


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_crashes_in_a_row_make_the_loop_unhealthy_and_progress_heals_it() -> None:
    restarts = Restarts(unhealthy_after=3, first_delay_s=0.5, max_delay_s=10.0)
    assert restarts.healthy
    delays = [restarts.crashed() for _ in range(2)]
    assert delays == [0.5, 1.0]
    assert restarts.healthy  # two crashes may be bad luck (a rebalance, a broker failover)
    assert restarts.crashed() == 2.0
    assert not restarts.healthy
    assert [restarts.crashed() for _ in range(4)] == [4.0, 8.0, 10.0, 10.0]
    assert restarts.total == 7
    restarts.progressed()  # one whole poll handled and committed
    assert restarts.healthy
    assert restarts.crashed() == 0.5


def test_repeated_warnings_are_logged_once_then_summarised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    clock = Clock()
    warning = ThrottledWarning(structlog.get_logger("t"), "kafka_unreachable", 30.0, clock=clock)
    for _ in range(50):
        warning.warn(error="NodeNotReadyError")
        clock.now += 0.1  # 5 s of a retry loop
    lines = [line for line in capsys.readouterr().err.splitlines() if "kafka_unreachable" in line]
    assert len(lines) == 1
    clock.now += 30.0
    warning.warn(error="NodeNotReadyError")
    lines = [line for line in capsys.readouterr().err.splitlines() if "kafka_unreachable" in line]
    assert len(lines) == 1
    assert '"suppressed": 49' in lines[0]
    warning.recovered()
    text = capsys.readouterr().err
    assert "kafka_unreachable_recovered" in text
    assert '"failures": 51' in text
    warning.recovered()  # nothing to report twice
    assert "recovered" not in capsys.readouterr().err


def test_aiokafka_child_loggers_are_throttled(caplog: pytest.LogCaptureFixture) -> None:
    # aiokafka logs a failed fetch or heartbeat through aiokafka.consumer.* loggers, many per
    # second while a broker is away; a filter on the "aiokafka" logger alone never sees them.
    configure_logging("info", "json")  # filters the handlers in place now, pytest's included
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    for _ in range(200):
        fetcher.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
    logging.getLogger("other.library").error("not throttled %s", 1)
    logging.getLogger("other.library").error("not throttled %s", 2)
    assert [r.name for r in caplog.records] == [
        "aiokafka.consumer.fetcher",
        "other.library",
        "other.library",
    ]
