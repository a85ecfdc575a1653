"""Regenerate the pictures in docs/ from a finished study (not part of the package or tests).

    torchtune-hp run digits_mlp
    pip install playwright   # and a Chromium: apt-get install chromium
    python docs/screenshots.py logs/digits_mlp

Writes docs/hparams_table.png (a screenshot of TensorBoard's HParams table, taken with a
headless Chromium), docs/gp_slices.png and docs/gp_importance.png (the last GP pictures of the
study-level run, exactly as TensorBoard's Images tab shows them).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DOCS = Path(__file__).parent


def last_images(study_dir: Path) -> None:
    acc = EventAccumulator(str(study_dir), size_guidance={"images": 0})
    acc.Reload()
    for tag, name in (("gp/slices", "gp_slices.png"), ("gp/importance", "gp_importance.png")):
        (DOCS / name).write_bytes(acc.Images(tag)[-1].encoded_image_string)


def hparams_screenshot(study_dir: Path, chromium: str = "/usr/bin/chromium") -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(study_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(8)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/#hparams")
            page.wait_for_timeout(8000)
            page.screenshot(path=str(DOCS / "hparams_table.png"))
            browser.close()
    finally:
        server.kill()


if __name__ == "__main__":
    study = Path(sys.argv[1] if len(sys.argv) > 1 else "logs/digits_mlp")
    last_images(study)
    hparams_screenshot(study)
