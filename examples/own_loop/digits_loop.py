"""A user's own model and training loop in plain PyTorch, tuned by q3r-tune (see docs/byo-loop.md).

The digits images (8 x 8, from scikit-learn, no download), a three-layer MLP, mini-batch training.
q3r-tune calls ``train(trial)`` once per trial; the four ``trial`` calls are all it needs.

    q3r-tune sweep examples/own_loop/sweep.yaml      # a sweep over techniques and hyperparameters
    q3r-tune train examples/own_loop/train.yaml      # one trial
"""
import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

BATCH = 64


class MLP(nn.Module):
    def __init__(self, width: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(64, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 10)      # not regularized: model.modules defaults to all-but-head

    def forward(self, x):                     # (B, 64) -> (B, 10)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def digits(seed: int):
    """(train, validation) tensors: 80/20 split of the 1797 digits, shuffled by ``seed``."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])


def train(trial):
    (x, y), (x_val, y_val) = digits(trial.seed)
    x, y, x_val, y_val = (t.to(trial.device) for t in (x, y, x_val, y_val))
    steps = math.ceil(len(y) / BATCH)
    model, optimizer = trial.prepare(MLP(), steps_per_epoch=steps)   # the technique applied (and restored)

    def evaluate(m):                          # the metric q3r-tune scores at every retention level
        m.eval()
        return (m(x_val).argmax(-1) == y_val).float().mean().item()

    for epoch in trial.epochs():             # 1..epochs, or after the last checkpoint when resumed
        model.train()
        order = torch.randperm(len(y)).to(trial.device)
        total = 0.0
        for i in range(0, len(y), BATCH):
            batch = order[i:i + BATCH]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            (loss + trial.extra_loss()).backward()   # the Q3R penalty of adam_q3r_loss; 0 otherwise
            optimizer.step()
            total += loss.item()
        trial.report(epoch, evaluate, loss=total / steps)
