"""train/engine=ray: `MetricLearning.loop` on Ray Train's data-parallel workers (`TorchTrainer`).

Every worker builds the same network from the same seed, takes every `workers`-th batch of the same
sampler order and trains a `ray.train.torch.prepare_model` (DistributedDataParallel) copy, so the
gradients are averaged and the copies stay the same network; the first worker's BatchNorm statistics
are broadcast after each epoch. The photos travel once, through Ray's object store (a worker on
another node needs no catalog folder). Each epoch every worker reports a checkpoint: the first the
training state, each its replica record (rank, digest of its network, the rows it trained on); the
driver refuses copies that ended different. A rerun of the same training (same key, so the same Ray
run name and storage folder) is restored by Ray Train and resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessError
from harness.train.engines.base import Session, TrainEngine

log = logging.getLogger(__name__)


class RaySession(Session):
    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap(self, module):
        import ray.train.torch

        if self.world == 1 or not any(p.requires_grad for p in module.parameters()):
            return module  # DistributedDataParallel refuses a module with nothing to train (most losses)
        return ray.train.torch.prepare_model(module, move_to_device=self.device)

    def synchronise(self, model) -> None:
        if self.world > 1:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer.data, 0)

    def broadcast(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return float(t)

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t) / self.world

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        if self.world == 1:
            return part
        size = -(-n // self.world)  # all_gather wants one shape: every part padded to the longest
        padded = torch.zeros((size, *part.shape[1:]), dtype=part.dtype, device=part.device)
        padded[:len(part)] = part
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded)
        out = torch.empty((n, *part.shape[1:]), dtype=part.dtype, device=part.device)
        for rank, got in enumerate(parts):
            out[rank::self.world] = got[:len(range(rank, n, self.world))]
        return out

    def restore(self) -> dict | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)

    def save(self, state: dict, replica: dict) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as folder:
            if self.rank == 0:
                torch.save(state, Path(folder) / "state.pt")
            (Path(folder) / f"replica-{self.rank}.json").write_text(json.dumps(replica))
            # every worker reports (Ray merges their folders into one checkpoint); rank 0's metrics are kept
            ray.train.report(state["history"][-1], checkpoint=ray.train.Checkpoint.from_directory(folder))


def _worker(config: dict) -> None:
    import ray

    session = RaySession()
    images = torch.from_numpy(np.array(ray.get(config["images"])))  # a writable copy of the shared photos
    config["trainer"].loop(config["backbone"], images, config["labels"], config["train_rows"], config["held_rows"],
                           config["key"], session)


class RayTraining(TrainEngine):
    """`train.engine.*`: address (null: a local Ray instance, or the cluster `ray start` made here;
    `auto`; `ray://host:10001`), workers, num_cpus per worker, use_gpu (one GPU per worker)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 2, num_cpus: float = 1, use_gpu: bool = False):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise HarnessError(f"train.engine.workers must be a whole number >= 1; got {workers!r}.")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or num_cpus <= 0:
            raise HarnessError(f"train.engine.num_cpus must be a number > 0; got {num_cpus!r}.")
        self.address, self.workers, self.num_cpus, self.use_gpu = address, workers, num_cpus, bool(use_gpu)

    def settings(self) -> dict:
        return {"engine": self.name, "workers": self.workers}

    def train(self, trainer, backbone, images, labels, train_rows, held_rows, out_dir, key, log_epoch):
        import ray
        from ray.train import CheckpointConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from harness.train.metric import save_atomically

        steps = trainer.steps_per_epoch or max(1, len(train_rows) // trainer.batch_size)
        if steps < self.workers:
            raise HarnessError(f"train.engine.workers={self.workers}: an epoch has {steps} batches, fewer than the "
                               "workers; use fewer workers or more train.steps_per_epoch.")
        started = False
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, include_dashboard=False, configure_logging=False)
            except ConnectionError as exc:
                raise HarnessError(f"train.engine.address={self.address!r}: no Ray cluster there ({exc}).") from None
            started = True
        try:
            config = {"trainer": trainer, "backbone": backbone, "images": ray.put(images.numpy()),
                      "labels": np.asarray(labels), "train_rows": train_rows, "held_rows": held_rows, "key": key}
            run = TorchTrainer(_worker, train_loop_config=config,
                               scaling_config=ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu,
                                                            resources_per_worker={"CPU": self.num_cpus}),
                               run_config=RunConfig(name=key[:16], storage_path=str((Path(out_dir) / "ray").resolve()),
                                                    checkpoint_config=CheckpointConfig(num_to_keep=1)))
            result = run.fit()
        finally:
            if started:
                ray.shutdown()
        if result.checkpoint is None:
            raise HarnessError(f"train.engine=ray: the training under {out_dir} reported no checkpoint.")
        with result.checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", map_location="cpu", weights_only=True)
            replicas = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("replica-*.json"))]
        if len({r["digest"] for r in replicas}) > 1:
            raise HarnessError("train.engine=ray: the workers ended with different networks (their gradients were "
                               "not averaged); nothing is kept.")
        save_atomically(state["weights"], Path(out_dir) / "weights.pt")
        if log_epoch is not None:
            for record, epoch in zip(state["history"], range(1, len(state["history"]) + 1)):
                log_epoch(record, epoch)
        return state["history"], state["best"], sorted(replicas, key=lambda r: r["rank"])
