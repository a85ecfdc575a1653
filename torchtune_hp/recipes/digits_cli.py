"""A LightningCLI training script, tuned by digits_cli.yaml with no change to this file.

Standalone: python digits_cli.py fit --model.lr=0.01 --model.dropout=0.2 \
    --model.weight_decay=1e-4 --model.width=128 --model.optimizer=adam --trainer.max_epochs=10

Under torchtune-hp (``args: lightning_cli``) the launcher appends each parameter as
``--model.<name>=<value>``, adds ``--trainer.callbacks+=torchtune_hp.TuneCallback`` (reports
and pruning) and points the TensorBoard logger at the trial's folder.
"""

from digits_mlp import DigitsData, DigitsMLP
from lightning.pytorch.cli import LightningCLI

if __name__ == "__main__":
    LightningCLI(DigitsMLP, DigitsData)
