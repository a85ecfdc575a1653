"""A LightningCLI script over a tiny regression model, run untouched by the executor tests."""

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/, for tiny_model
import lightning as L  # noqa: E402
from tiny_model import Tiny, loaders  # noqa: E402


class TinyData(L.LightningDataModule):
    def train_dataloader(self):
        return loaders()[0]

    def val_dataloader(self):
        return loaders()[1]


if __name__ == "__main__":
    LightningCLI(Tiny, TinyData)
