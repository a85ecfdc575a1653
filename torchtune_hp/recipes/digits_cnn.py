"""A plain Lightning training script with its own arguments: a small CNN on the 8x8 digits.

Standalone: python digits_cnn.py --lr 0.01 --channels 16 --dropout 0.2 --epochs 15

It knows nothing of torchtune_hp: it prints one progress line per epoch
(``epoch 3 | valid loss 0.1234 |``) and logs to TensorBoard in ``--logdir`` (``tb`` in its
working folder: under torchtune-hp, the trial's folder). It trains on a GPU when it sees one
(under torchtune-hp, the one its trial was given) and on the CPU otherwise. digits_cnn.yaml
tunes it by reading those lines (``objective.metric_regex``), so ASHA can stop it early.
"""

from __future__ import annotations

import argparse
import logging
import warnings

import lightning as L
import torch
from digits_mlp import digits_loaders
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn


class DigitsCNN(L.LightningModule):
    def __init__(self, lr: float, channels: int, dropout: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * channels * 16, 10),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            loss = float(self.trainer.callback_metrics["val_loss"])
            print(f"epoch {self.current_epoch} | valid loss {loss:.6f} |", flush=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--logdir", default="tb", help="TensorBoard folder")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    L.seed_everything(0, verbose=False)
    train_dl, val_dl = digits_loaders(args.batch_size, 0.25, 0)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        logger=TensorBoardLogger(args.logdir, name="", version="", default_hp_metric=False),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(DigitsCNN(args.lr, args.channels, args.dropout), train_dl, val_dl)


if __name__ == "__main__":
    main()
