"""The ``torchtune-hp`` command's entry point: stop signals are handled before anything heavy
is imported, so Ctrl-C, SIGTERM or SIGHUP at any moment, start-up included, ends the command
with one line and the code 128 + signal, never a traceback.

Exit codes (also in the README): 0 success; 1 the study ended without a COMPLETE trial (or
stopped itself on repeated failures, or ``best`` found none); 2 bad input or unusable files
(the message names the file and key); 130, 143, 129 stopped by SIGINT, SIGTERM, SIGHUP.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from torchtune_hp import signals


def main() -> None:
    signals.install()
    try:
        from torchtune_hp.cli import main as cli_main

        code = cli_main()
    except KeyboardInterrupt as e:
        signals.ignore_from_now_on()
        name = signal.Signals(getattr(e, "signum", signal.SIGINT)).name
        study = sys.modules.get("torchtune_hp.study")  # loaded where a study was opened
        what = (
            "running trials are marked FAILED (interrupted) and run again when you run the "
            "same command (a paused trial that ran again is paused again, to resume later); "
            "finished trials are kept"
            if study is not None and study.drove_here()
            else "no study had started: nothing ran and nothing was recorded"
        )
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP) cannot be written to
            print(f"interrupted ({name}): {what}", file=sys.stderr)
        code = signals.exit_code(e)
    signals.ignore_from_now_on()  # a signal during the interpreter's shutdown: same exit code
    ray_exit = sys.modules.get("torchtune_hp.executors.ray_exit")  # loaded where Ray was used
    if ray_exit is not None:
        ray_exit.exit_now_if_left(code)  # a gone cluster: not Ray's 15 s exit hook
    sys.exit(code)


if __name__ == "__main__":
    main()
