"""Learning-rate schedules from the papers."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def iwae_epochs(stages: int) -> int:
    """Epochs of the first ``stages`` stages of the IWAE schedule: sum of 3^i, i < stages.

    Reference: Burda, Grosse & Salakhutdinov (2015), section 5: 3^i epochs at lr 1e-3 * 10^(-i/7),
    i = 0..7 (3280 epochs in all).
    """
    if not 1 <= int(stages) <= 8:
        raise ValueError(f"schedule.stages must be in 1..8 (the paper has 8 stages), got {stages}")
    return sum(3**i for i in range(int(stages)))


def iwae_lr_factor(epoch: int) -> float:
    """Multiplier of the base lr at ``epoch``: 10^(-i/7) in stage i (stage i lasts 3^i epochs)."""
    i, end = 0, 1
    while epoch >= end and i < 7:
        i += 1
        end += 3**i
    return 10.0 ** (-i / 7.0)


def iwae_schedule(optimizer: Optimizer, stages: int = 8) -> LambdaLR:
    """The IWAE paper's stage-wise schedule as a per-epoch ``LambdaLR`` (``stages`` checks bounds)."""
    iwae_epochs(stages)
    return LambdaLR(optimizer, iwae_lr_factor)
