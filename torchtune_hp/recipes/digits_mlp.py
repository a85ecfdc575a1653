"""A small LightningModule MLP on scikit-learn's bundled digits (1,797 8x8 images, 10 classes).

No download: the data ships inside scikit-learn. The split is stratified and seeded, and the
weights are seeded too, so the same parameters give the same validation loss.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchtune_hp import TuneCallback

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def digits_loaders(
    batch_size: int, val_fraction: float, seed: int
) -> tuple[DataLoader, DataLoader]:
    """Train/validation loaders; features scaled to [0, 1], shape (n, 64)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x / 16.0, y, test_size=val_fraction, stratify=y, random_state=seed
    )

    def tensors(a: Any, b: Any) -> TensorDataset:
        return TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))

    gen = torch.Generator().manual_seed(seed)
    return (
        DataLoader(tensors(x_tr, y_tr), batch_size=batch_size, shuffle=True, generator=gen),
        DataLoader(tensors(x_va, y_va), batch_size=512),
    )


class DigitsData(L.LightningDataModule):
    """The same split as :func:`digits_loaders`, as a DataModule (for LightningCLI scripts)."""

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed

    def setup(self, stage: str) -> None:
        self.loaders = digits_loaders(self.batch_size, self.val_fraction, self.seed)

    def train_dataloader(self) -> DataLoader:
        return self.loaders[0]

    def val_dataloader(self) -> DataLoader:
        return self.loaders[1]


class DigitsMLP(L.LightningModule):
    """64 -> width -> width -> 10 with ReLU and dropout; logs ``val_loss`` (cross-entropy)."""

    def __init__(
        self, lr: float, dropout: float, weight_decay: float, width: int, optimizer: str
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        kwargs = {"momentum": 0.9} if hp.optimizer == "sgd" else {}
        return OPTIMIZERS[hp.optimizer](
            self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, **kwargs
        )


def train(
    trial: Any,
    max_epochs: int = 25,
    batch_size: int = 64,
    val_fraction: float = 0.25,
    data_seed: int = 0,
) -> float:
    """The objective: fit with ``trial.params`` and return the final validation loss."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")
    L.seed_everything(data_seed, verbose=False)
    train_dl, val_dl = digits_loaders(batch_size, val_fraction, data_seed)
    model = DigitsMLP(**trial.params)
    # the GPU the executor gave this trial, else the CPU: also where it names one that torch
    # here cannot see (executor.devices: [0] under a CUDA_VISIBLE_DEVICES mask, a CPU build)
    gpu = bool(trial.devices) and torch.cuda.is_available()
    trainer = L.Trainer(
        max_epochs=max_epochs,
        accelerator="gpu" if gpu else "cpu",
        devices=trial.devices if gpu else 1,
        logger=trial.logger(),  # curves into logs/<study>/trial_NNNN/, beside its HParams row
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[TuneCallback(trial, monitor="val_loss")],
    )
    # a paused trial resumed (pruner: {name: gp, resume: true}) goes on from its checkpoint
    trainer.fit(model, train_dl, val_dl, ckpt_path=getattr(trial, "ckpt_path", None))
    return float(trainer.callback_metrics["val_loss"])
