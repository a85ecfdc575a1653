"""A tiny Lightning regression model and its data, shared by the callback and board tests."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Tiny(L.LightningModule):
    def __init__(self, lr: float, log_name: str = "val_loss") -> None:
        super().__init__()
        self.lr, self.log_name = lr, log_name
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log(self.log_name, loss, sync_dist=True)  # the same value on every DDP rank
        self.log("val_score", -loss, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.01 * torch.randn(128, 1, generator=g)
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=32), DataLoader(ds, batch_size=64)
