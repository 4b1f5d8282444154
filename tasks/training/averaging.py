"""train.ema_decay: an exponential moving average of the weights, validated, checkpointed and exported in
place of the raw weights (Lightning's WeightAveraging callback around torch's AveragedModel)."""

from __future__ import annotations

import torch
from pytorch_lightning.callbacks import WeightAveraging


def ema_with_warmup(decay: float):
    """torch's foreach EMA update with the decay warmed up as in TensorFlow's ExponentialMovingAverage:
    min(decay, (1 + n) / (10 + n)) after n updates, so the first, barely trained weights fade out of the
    average within a short run instead of keeping a share of decay**n."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):  # integer buffers (counters) follow the model
            torch._foreach_copy_(averaged, current)
            return
        n = n.to(averaged[0].device, torch.float32)  # stays on the device: no host sync per update
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
        torch._foreach_lerp_(averaged, current, weight.to(averaged[0].dtype))

    return update


class WeightEMA(WeightAveraging):
    """The average is updated after every Lightning step, which runs `steps_per_update` optimizer steps
    (train.steps_per_execution): the decay per update is decay**steps_per_update, so the average spans
    the same number of optimizer steps whatever the grouping."""

    def __init__(self, decay: float, steps_per_update: int = 1) -> None:
        super().__init__(multi_avg_fn=ema_with_warmup(decay**steps_per_update))
