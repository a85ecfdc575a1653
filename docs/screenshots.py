"""Regenerate every picture in the README from a real run (not part of the package or tests).

    pip install playwright          # and a Chromium: apt-get install chromium
    python docs/screenshots.py      # runs digits_mlp into a temporary logdir first
    python docs/screenshots.py logs/digits_mlp   # or takes a study that already ran

Writes, into docs/: ``hparams_table.png`` (TensorBoard's HParams table in a headless Chromium,
against a real TensorBoard server), ``gp_slices.png`` and ``gp_importance.png`` (the study's
last GP pictures) and ``view_<name>.png`` for each study view (history, curves, slices, pairs,
parallel), exactly as TensorBoard's Images tab shows them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DOCS = Path(__file__).parent
VIEWS = ("history", "curves", "slices", "pairs", "parallel")
# Chromium on a machine with no network: no background connections, a fresh profile
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def run_study(logdir: Path) -> Path:
    """The README's first command, into ``logdir``."""
    subprocess.run(
        [sys.executable, "-m", "torchtune_hp", "run", "digits_mlp", f"logdir={logdir}"],
        check=True,
    )
    return logdir / "digits_mlp"


def last_images(study_dir: Path) -> list[Path]:
    wanted = {"gp/slices": "gp_slices.png", "gp/importance": "gp_importance.png"}
    wanted.update({f"views/{v}": f"view_{v}.png" for v in VIEWS})
    written = []
    for tag, name in wanted.items():
        acc = EventAccumulator(str(study_dir / "study" / tag.split("/")[0]), {"images": 0})
        acc.Reload()
        (DOCS / name).write_bytes(acc.Images(tag)[-1].encoded_image_string)
        written.append(DOCS / name)
    return written


def hparams_screenshot(study_dir: Path, chromium: str = "/usr/bin/chromium") -> Path:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(study_dir.parent),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=chromium,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1600, "height": 950},
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/#hparams")
            page.wait_for_timeout(10000)
            page.screenshot(path=str(DOCS / "hparams_table.png"))
            browser.close()
    finally:
        server.kill()
    return DOCS / "hparams_table.png"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        study = Path(sys.argv[1])
    else:
        study = run_study(Path(tempfile.mkdtemp(prefix="torchtune_hp_docs_")))
    for path in [*last_images(study), hparams_screenshot(study)]:
        print(path)
