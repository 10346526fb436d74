"""Counts for the reliability summary line printed at the end of the run."""

from __future__ import annotations

COUNTS = {
    "bad-input cases": 0,
    "kills survived": 0,
    "corruptions detected": 0,
    "faults handled": 0,
}


def pytest_terminal_summary(terminalreporter) -> None:
    if any(COUNTS.values()):
        line = ", ".join(f"{v} {k}" for k, v in COUNTS.items())
        terminalreporter.write_line(f"reliability: {line}")
