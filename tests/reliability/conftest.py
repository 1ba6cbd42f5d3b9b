"""Fixtures of the reliability tests: the fault proxy and the figures they measure (the echo service is tests/conftest.py's).

Every test that measures something calls ``figure(scenario, promise, measured, **values)``.
The figures are printed at the end of the run (terminal summary) and written to
``<pytest basetemp>/reliability_figures.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

FIGURES: list[dict[str, Any]] = []
_FIGURES_FILE: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "heavy: a long load test (still part of the default run and of CI; deselect with -m 'not heavy')"
    )


@pytest.fixture(scope="session")
def figures_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.getbasetemp() / "reliability_figures.json"
    _FIGURES_FILE.append(path)
    yield path
    path.write_text(json.dumps(FIGURES, indent=2) + "\n")


Figure = Callable[..., None]


@pytest.fixture
def figure(request: pytest.FixtureRequest, figures_file: Path) -> Figure:
    def record(scenario: str, promise: str, measured: str, **values: Any) -> None:
        entry = {"test": request.node.nodeid, "scenario": scenario, "promise": promise, "measured": measured,
                 "values": values}
        FIGURES.append(entry)
        figures_file.write_text(json.dumps(FIGURES, indent=2) + "\n")  # also if the run is interrupted
        print(f"FIGURE {scenario} | {promise} | {measured}")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    terminalreporter.write_line("| scenario | promise | measured |")
    terminalreporter.write_line("|---|---|---|")
    for entry in FIGURES:
        terminalreporter.write_line(f"| {entry['scenario']} | {entry['promise']} | {entry['measured']} |")
    if _FIGURES_FILE:
        terminalreporter.write_line(f"written to {_FIGURES_FILE[0]}")


