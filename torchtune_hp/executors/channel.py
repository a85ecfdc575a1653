"""How a trial running in another process talks to the driver: two files in its run folder.

The trial appends one JSON line per report to ``report.jsonl`` (``{"seq", "step", "values"}``)
and, when it wants the pruner's answer, waits for ``verdict`` (``"<seq> prune|continue"``,
replaced atomically by the driver). The driver alone writes SQLite. Files, not sockets: they
survive either side dying, they work inside containers and under DDP re-launches, and the
report log doubles as a record of what the script said.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPORTS = "report.jsonl"
VERDICT = "verdict"
RESULT = "result.json"


def append_report(run_dir: Path, seq: int, step: int, values: dict[str, float]) -> None:
    line = json.dumps({"seq": seq, "step": step, "values": values}) + "\n"
    with open(run_dir / REPORTS, "a") as f:
        f.write(line)
        f.flush()


def wait_verdict(run_dir: Path, seq: int, timeout_s: float = 30.0) -> bool | None:
    """True to prune, False to continue, None when the driver did not answer in time."""
    path = run_dir / VERDICT
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while time.monotonic() < deadline:
        try:
            got, _, word = path.read_text().partition(" ")
            if int(got) >= seq:
                return word.strip() == "prune"
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return None


def write_verdict(run_dir: Path, seq: int, prune: bool) -> None:
    tmp = run_dir / f".{VERDICT}.tmp"
    tmp.write_text(f"{seq} {'prune' if prune else 'continue'}")
    os.replace(tmp, run_dir / VERDICT)


class LineTail:
    """New complete lines of a growing file (a trial's reports, its stdout) since the last
    call; a line still being written waits for the next call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


class ReportReader(LineTail):
    """The driver's side of ``report.jsonl``: the reports written since the last call."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir / REPORTS)

    def new(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.new_lines() if line.strip()]
