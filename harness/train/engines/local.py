"""train/engine=local: the loop in this process; checkpoints in the training's own folder."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.train.engines.base import Session, TrainEngine


class LocalSession(Session):
    def __init__(self, device: torch.device, out_dir: Path, log_epoch=None):
        self.device, self.out_dir, self.log_epoch = device, Path(out_dir), log_epoch
        self.checkpoint = self.out_dir / "checkpoint.pt"
        self.replicas, self.history, self.best = [], [], 0

    def restore(self) -> dict | None:
        if not self.checkpoint.exists():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=True)  # tensors and numbers only

    def save(self, state: dict, replica: dict) -> None:
        from harness.train.metric import save_atomically

        save_atomically(state, self.checkpoint)
        self.replicas = [replica]
        if self.log_epoch is not None:
            self.log_epoch(state["history"][-1], state["epoch"])

    def finish(self, history, best, weights) -> None:
        from harness.train.metric import save_atomically

        save_atomically(weights, self.out_dir / "weights.pt")
        self.history, self.best = history, best


class LocalTraining(TrainEngine):
    name = "local"

    def train(self, trainer, backbone, images, labels, train_rows, held_rows, out_dir, key, log_epoch):
        session = LocalSession(backbone.device, out_dir, log_epoch)
        trainer.loop(backbone, images, labels, train_rows, held_rows, key, session)
        return session.history, session.best, session.replicas
