"""The two sides of a training engine: `TrainEngine` (the driver: where the workers run, what comes
back) and `Session` (a worker's view inside `MetricLearning.loop`: its rank, its device, how its
checkpoints are kept and restored)."""
from __future__ import annotations

import torch


class Session:
    """One worker of `world`. These defaults are a single worker's: nothing to wrap or to share."""

    rank, world = 0, 1
    device: torch.device

    def wrap(self, module: torch.nn.Module):
        """The module the loop calls forward on (data-parallel workers: one that averages gradients)."""
        return module

    def synchronise(self, model: torch.nn.Module) -> None:
        """Make every worker's copy of the network the same (its buffers: BatchNorm statistics)."""

    def broadcast(self, value: float) -> float:
        """The first worker's value, on every worker (a decision they all take alike)."""
        return value

    def mean(self, value: float) -> float:
        return value

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of all workers, in order, where worker r computed rows r, r + world, ... (`part`)."""
        return part

    def restore(self) -> dict | None:
        """The last checkpoint's state, or None."""
        raise NotImplementedError

    def save(self, state: dict, replica: dict) -> None:
        """End of an epoch: keep `state` (what `restore` gives back) and this worker's `replica`
        (rank, network digest, rows trained on)."""
        raise NotImplementedError

    def finish(self, history: list[dict], best: int, weights: dict) -> None:
        """Training over: `weights` is the best epoch's network."""


class TrainEngine:
    name = "local"

    def settings(self) -> dict:
        """What changes the trained weights (part of a training's key: another split of the batches
        is another training, never resumed from this one's checkpoint)."""
        return {"engine": self.name}

    def train(self, trainer, backbone, images, labels, train_rows, held_rows, out_dir, key,
              log_epoch) -> tuple[list[dict], int, list[dict]]:
        """Run `trainer.loop`; write the best epoch's network to `out_dir`/weights.pt; return (history,
        best epoch, each worker's replica record from the last epoch)."""
        raise NotImplementedError
