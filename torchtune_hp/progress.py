"""The live view of a running study: a rich panel on a terminal, plain lines elsewhere (CI
logs, pipes), so both stay readable."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from torchtune_hp.display import fmt_params, fmt_value, headline
from torchtune_hp.study import Study
from torchtune_hp.trial import FrozenTrial, Trial, TrialState

RUNNING_ROWS = 8  # running trials shown one per row; more are counted


class _Console(Console):
    """Rich answers a broken pipe (``| head``, a closed log shipper) with ``SystemExit(1)``:
    here the view goes quiet instead, and the study goes on."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.file.fileno())  # later writes to it by anyone go nowhere
        os.close(devnull)


class ProgressView:
    """Shows trial n/N, best so far, the current params and elapsed time. A subscriber of the
    study (:class:`~torchtune_hp.study.StudyListener`) while the ``with`` block runs. Showing
    progress never stops a study: once the terminal is gone (a closed window, a broken pipe)
    the view goes quiet and the study goes on."""

    def __init__(self, study: Study, n_trials: int, console: Console | None = None) -> None:
        self.study = study
        self.n_trials = n_trials
        self.console = console or _Console(stderr=True)
        self.t0 = time.monotonic()
        self.running: dict[int, Trial] = {}  # every trial under way (workers > 1: several)
        self.rows: list[tuple[str, Text | str]] = []  # the panel but its clock (see _panel)
        self.live: Live | None = None
        self.quiet = False
        self._resumed: set[int] = set()  # paused trials running again (see _done)

    def _show(self, action: Callable[[], object]) -> None:
        if self.quiet:
            return
        try:
            action()
        except OSError:
            self.quiet, self.live = True, None

    def __enter__(self) -> ProgressView:
        self.study.subscribe(self)
        done = self.study.n_finished
        line = (
            f"study {self.study.name!r}: {done}/{self.n_trials} trials done, "
            f"sampler {self.study.sampler.name}, storage {self.study.storage.path or 'memory'}"
        )
        self._show(lambda: self.console.print(Text(line), soft_wrap=True))
        if self.console.is_terminal:
            self._rows()
            # the panel drawn afresh at each refresh, so its clock runs between trials
            self.live = Live(console=self.console, refresh_per_second=2, get_renderable=self._panel)
            self._show(self.live.__enter__)
        return self

    def __exit__(self, *exc: object) -> None:
        self.study.unsubscribe(self)
        live = self.live
        if live is not None:
            self._show(lambda: live.__exit__(None, None, None))

    def _best(self) -> FrozenTrial | None:
        return self.study.incumbent

    def _rows(self) -> None:
        """The panel's rows as of the study's last event, read here, in the study's thread:
        the refresh thread that draws them reads no study state."""
        best = self._best()
        done = self._done()  # the trial under way is the next; at the end, the last
        rows: list[tuple[str, Text | str]] = [
            ("trial", f"{min(done + 1, self.n_trials)}/{self.n_trials}"),
            ("best", "-" if best is None else f"{fmt_value(best.value)} (trial {best.number})"),
        ]
        running = list(self.running.values())
        for trial in running[:RUNNING_ROWS]:
            rows.append(("running", Text(f"#{trial.number}: {fmt_params(trial.params)}")))
        if len(running) > RUNNING_ROWS:  # 32 Ray workers: a panel, not a page
            rows.append(("", f"and {len(running) - RUNNING_ROWS} more running"))
        self.rows = rows

    def _panel(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for name, cell in self.rows:
            table.add_row(name, cell)
        table.add_row("elapsed", f"{time.monotonic() - self.t0:.0f} s")
        return table

    def _refresh(self) -> None:
        self._rows()
        live = self.live
        if live is not None:
            self._show(live.refresh)

    def trial_started(self, study: Study, trial: Trial) -> None:
        self.running[trial.number] = trial
        if trial.resume_from is not None:
            self._resumed.add(trial.number)
        self._refresh()

    def _done(self) -> int:
        """Trials done: the study's count, and the paused trials running again, which it
        counted when they paused (RUNNING again, they are not in its count until they end):
        the count does not move back while one runs."""
        return self.study.n_finished + len(self._resumed)

    def trial_finished(self, study: Study, trial: FrozenTrial) -> None:
        self.running.pop(trial.number, None)
        self._resumed.discard(trial.number)
        best = self._best()
        state = trial.state.value
        detail = fmt_value(trial.value)
        if trial.state is TrialState.FAILED and trial.error:
            text = trial.error.strip()
            line = headline(text)
            detail = line if len(line) <= 120 else f"{line[:116]} ..."
            if detail != text and study.dir is not None:
                detail += (
                    f" (all of it: torchtune-hp trials {shlex.quote(str(study.dir))} "
                    f"--trial {trial.number})"
                )
        if trial.resumes and trial.state.finished:  # the count did not move: say why
            state += " (resumed; counted when it paused)"
        line = (
            f"[{self._done()}/{self.n_trials}] trial {trial.number} {state} {detail} "
            f"({trial.duration_s or 0:.1f} s) best {fmt_value(best.value if best else None)} "
            f"| {fmt_params(trial.params)}"
        )
        self._show(lambda: self.console.print(line, markup=False, highlight=False, soft_wrap=True))
        self._refresh()
