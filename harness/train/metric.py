"""train=metric: a backbone fine-tuned on catalog labels with a pytorch-metric-learning loss.

`MetricLearning.fit` takes one set of catalog rows (a fold's catalog products, or the whole served
catalog; the caller never hands it a query or a distractor, and every id it trained on is in the
result) and returns a weights file the backbone loads like any local weights file
(`backbone.weights=PATH`), so extraction, the feature store (the file's digest is in the fingerprint),
OpenVINO, int8 and serving treat a fine-tuned network like any other.

What it does, as pytorch-metric-learning users expect: `MPerClassSampler` batches (m photos of each of
batch_size / m labels), the configured loss (its miner, if any), AdamW over the last
`trainable_blocks` blocks of the network (and the loss's own parameters: proxies, class centres),
torchvision augmentations (random resized crop, flip, colour jitter), bf16 autocast on CPUs that have
it, CUDA when present. A stratified `holdout` share of the rows is kept out of training; after each
epoch its P@k (searching the training rows) picks the best epoch, and training stops after `patience`
epochs without a better one. Every epoch ends with a checkpoint (weights, optimizer, RNG states,
history) that a killed training resumes from; a checkpoint of other settings or other rows is not
resumed from.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    weights: Path                  # the best epoch's full network, as a state dict
    history: list[dict]            # per epoch: loss, holdout P@k, seconds
    best_epoch: int                # 1-based; 0: no epoch improved on the untrained network
    seconds: float
    trained_ids: list[str] = field(default_factory=list)   # the rows it learnt from
    holdout_ids: list[str] = field(default_factory=list)   # the rows it stopped early on
    # per data-parallel worker, its last epoch: rank, the digest of its network, the ids it trained on
    replicas: list[dict] = field(default_factory=list)


def blocks(model: nn.Module) -> nn.Module | None:
    """The network's stack of blocks: its longest ModuleList / Sequential (EfficientNet's `_blocks`,
    a ViT's `blocks`)."""
    stacks = [m for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential))]
    return max(stacks, key=len, default=None)


def freeze(model: nn.Module, trainable_blocks: int | None) -> int:
    """Leave only the last `trainable_blocks` blocks and what follows them trainable (None: all);
    returns how many parameters train."""
    if trainable_blocks is not None:
        stack = blocks(model)
        if stack is None:
            raise HarnessError("train.trainable_blocks: this network has no stack of blocks; use null (all of it).")
        keep = {id(p) for b in list(stack)[len(stack) - trainable_blocks:] for p in b.parameters()}
        stack_params = {id(p) for p in stack.parameters()}
        order = [p for p in model.parameters()]
        first = next(i for i, p in enumerate(order) if id(p) in stack_params)
        for i, p in enumerate(order):
            # the stem (before the stack) and the frozen blocks stay as they are; the head after it trains
            p.requires_grad_(id(p) in keep or (i > first and id(p) not in stack_params))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _stratified_holdout(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A mask of about `share` of the rows, taken only from labels with at least 3 rows (so every
    held-out label keeps two to train on)."""
    mask = np.zeros(len(labels), dtype=bool)
    if share <= 0:
        return mask
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n = int(round(share * len(rows)))
        if len(rows) >= 3 and n:
            mask[rng.choice(rows, size=min(n, len(rows) - 2), replace=False)] = True
    return mask


def precision_at_k(query_emb: torch.Tensor, query_labels, ref_emb: torch.Tensor, ref_labels, k: int) -> float:
    """Cosine P@k of the held-out rows among the training rows."""
    q = torch.nn.functional.normalize(query_emb.float(), dim=1)
    r = torch.nn.functional.normalize(ref_emb.float(), dim=1)
    idx = (q @ r.T).topk(min(k, len(r)), dim=1).indices.numpy()
    return float((np.asarray(ref_labels)[idx] == np.asarray(query_labels)[:, None]).mean())


class MetricLearning:
    def __init__(self, loss, miner=None, epochs: int = 3, lr: float = 1e-4, weight_decay: float = 1e-4,
                 batch_size: int = 32, m_per_class: int = 4, trainable_blocks: int | None = None,
                 holdout: float = 0.1, patience: int = 2, k: int = 5, level: str | None = None,
                 augment: bool = True, steps_per_epoch: int | None = None, seed: int = 0,
                 checkpoint_dir: str | None = None, engine=None):
        for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 2), ("m_per_class", m_per_class, 1),
                                 ("patience", patience, 1), ("k", k, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HarnessError(f"train.{name} must be a whole number >= {low}, got {value!r}.")
        if batch_size % m_per_class:
            raise HarnessError(f"train.batch_size ({batch_size}) must be a multiple of train.m_per_class ({m_per_class}).")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise HarnessError(f"train.lr must be a number > 0, got {lr!r}.")
        if not (isinstance(holdout, (int, float)) and 0 <= holdout < 0.5):
            raise HarnessError(f"train.holdout must be a share in [0, 0.5), got {holdout!r}.")
        if trainable_blocks is not None and (isinstance(trainable_blocks, bool) or not isinstance(trainable_blocks, int)
                                             or trainable_blocks < 1):
            raise HarnessError(f"train.trainable_blocks must be a whole number >= 1 or null, got {trainable_blocks!r}.")
        self.loss_factory, self.miner_factory = loss, miner
        self.epochs, self.lr, self.weight_decay, self.batch_size = epochs, float(lr), float(weight_decay), batch_size
        self.m_per_class, self.trainable_blocks, self.holdout, self.patience = m_per_class, trainable_blocks, holdout, patience
        self.k, self.level, self.augment, self.steps_per_epoch, self.seed = k, level, augment, steps_per_epoch, seed
        self.checkpoint_dir = checkpoint_dir
        if isinstance(engine, str):  # `train.engine=ray` sets a value; the engine is a config group
            raise HarnessError(f"train.engine={engine!r}: choose the training engine as a config group, "
                               f"train/engine={engine} (conf/train/engine/).")
        if engine is None:
            from harness.train.engines.local import LocalTraining

            engine = LocalTraining()
        self.engine = engine

    @property
    def name(self) -> str:
        """The loss, as a run's name shows it: multisimilarity, proxyanchor, arcface, triplet."""
        loss = getattr(self.loss_factory, "func", self.loss_factory)
        return getattr(loss, "__name__", type(loss).__name__).removesuffix("Loss").lower()

    # -- what is trained on ------------------------------------------------------------------
    def settings(self) -> dict:
        """Everything that changes the trained weights (a checkpoint of other settings is not resumed)."""
        skip = ("loss_factory", "miner_factory", "checkpoint_dir", "engine")
        return {k: v for k, v in vars(self).items() if k not in skip} | {
            "loss": repr(self.loss_factory), "miner": repr(self.miner_factory), "engine": self.engine.settings()}

    def fit(self, backbone, preprocess, paths: list[str], labels, ids, out_dir: str | Path | None = None,
            log_epoch=None) -> TrainResult:
        """Fine-tune `backbone` on these rows (photos `paths`, labels, item ids), writing the best epoch's
        weights and the checkpoints under `out_dir` (default: `checkpoint_dir`/<a digest of the settings,
        the backbone and the rows>, so running the same training again resumes it). `log_epoch(metrics,
        epoch)` gets each epoch's numbers (the tracker's log_metrics)."""
        from harness.engines.base import load

        t0 = time.perf_counter()
        labels, ids = np.asarray(labels).astype(str), np.asarray(ids).astype(str)
        if len(set(ids)) != len(ids):
            raise HarnessError("train: the rows to train on must have distinct item ids.")
        images, keep = [], []
        for n, path in enumerate(paths):
            tensor, _, _, _ = load(path, preprocess)
            if tensor is not None:
                images.append(tensor)
                keep.append(n)
        labels, ids = labels[keep], ids[keep]
        values, counts = np.unique(labels, return_counts=True)
        if (counts >= 2).sum() < 2:
            raise HarnessError("train=metric needs at least two labels with two or more catalog photos each.")
        images = torch.stack(images)
        held = _stratified_holdout(labels, self.holdout, np.random.default_rng(self.seed))
        train_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
        key = hashlib.sha256(json.dumps({"settings": self.settings(), "backbone": backbone.base_fingerprint,
                                         "preprocess": preprocess.fingerprint(), "ids": ids.tolist(),
                                         "labels": labels.tolist()}, sort_keys=True, default=str).encode()).hexdigest()
        if out_dir is None:
            if not self.checkpoint_dir:
                raise HarnessError("train.checkpoint_dir is not set: where the weights and checkpoints are written.")
            out_dir = Path(self.checkpoint_dir) / key[:16]
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        history, best, replicas = self.engine.train(self, backbone, images, labels, train_rows, held_rows, out_dir,
                                                    key, log_epoch)
        return TrainResult(out_dir / "weights.pt", history, best, time.perf_counter() - t0,
                           ids[train_rows].tolist(), ids[held_rows].tolist(),
                           [{**r, "ids": ids[r["rows"]].tolist()} for r in replicas])

    # -- the loop ----------------------------------------------------------------------------
    def _seed(self, offset: int = 0) -> None:
        random.seed(self.seed + offset)
        np.random.seed(self.seed + offset)  # MPerClassSampler draws from numpy's global generator
        torch.manual_seed(self.seed + offset)

    def loop(self, backbone, images, labels, train_rows, held_rows, key: str, session) -> None:
        """The training, as every worker runs it (`session`: harness.train.engines.base.Session, its
        rank among `world` data-parallel workers, its device, where checkpoints go). Each worker takes
        every `world`-th batch of the same seeded sampler order, so an epoch's batches are split among
        the workers and the wrapped model averages their gradients."""
        from pytorch_metric_learning.samplers import MPerClassSampler

        self._seed()
        device = session.device
        model, embedder = backbone.trainable()
        trainable = freeze(model, self.trainable_blocks)
        embedder.to(device)
        with torch.no_grad():
            dim = embedder.eval()(images[:2].to(device)).shape[1]
        names = {label: n for n, label in enumerate(np.unique(labels[train_rows]))}
        targets = torch.tensor([names.get(label, -1) for label in labels])
        loss_fn = self._loss(len(names), dim).to(device)
        miner = self.miner_factory() if self.miner_factory is not None else None
        params = [p for p in embedder.parameters() if p.requires_grad] + list(loss_fn.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        augment = self._augmentation(images.shape[-1])
        bf16 = device.type == "cuda" or _cpu_bf16()
        history, best, best_score, start, best_weights = [], 0, -1.0, 1, None
        state = session.restore()
        if state is not None and state.get("key") == key:
            model.load_state_dict(state["model"])
            loss_fn.load_state_dict(state["loss"])
            optimizer.load_state_dict(state["optimizer"])
            history, best, best_score, start = state["history"], state["best"], state["best_score"], state["epoch"] + 1
            best_weights = state["weights"]
            _set_rng(state["rng"])
            log.info("train: resumed after epoch %d", state["epoch"])
        elif state is not None:
            log.warning("train: the checkpoint found is of other settings or rows; starting again")
        if start == 1:  # the untrained network is the baseline an epoch has to beat
            best_score = self._holdout_score(embedder, images, labels, train_rows, held_rows, session)
            best_weights = _copy(model.state_dict())
        forward, loss_forward = session.wrap(embedder), session.wrap(loss_fn)
        since_best = len(history) - best if history else 0
        for epoch in range(start, self.epochs + 1):
            if since_best >= self.patience:
                break
            t_epoch = time.perf_counter()
            embedder.train()
            for module in embedder.modules():  # a frozen block's BatchNorm keeps its statistics too
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
            sampler = MPerClassSampler(targets[train_rows].numpy(), self.m_per_class, batch_size=self.batch_size,
                                       length_before_new_iter=self._epoch_length(len(train_rows)))
            order = train_rows[np.fromiter(iter(sampler), dtype=np.int64)]
            batches = [order[at:at + self.batch_size] for at in range(0, len(order) - self.batch_size + 1, self.batch_size)]
            mine = batches[:len(batches) // session.world * session.world][session.rank::session.world]
            losses = []
            for rows in mine:
                batch = augment(images[rows]).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    emb = forward(batch)
                emb = emb.float()
                y = targets[rows].to(device)
                loss = loss_forward(emb, y, miner(emb, y)) if miner is not None else loss_forward(emb, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            session.synchronise(model)  # BatchNorm statistics: the first worker's, so every copy is the same network
            score = self._holdout_score(embedder, images, labels, train_rows, held_rows, session)
            record = {"loss": session.mean(float(np.mean(losses)) if losses else float("nan")),
                      "holdout_precision_at_k": score, "seconds": time.perf_counter() - t_epoch}
            history.append(record)
            if score > best_score or not len(held_rows):  # no held-out rows: the last epoch
                best, best_score, since_best = epoch, score, 0
                best_weights = _copy(model.state_dict())
            else:
                since_best += 1
            session.save({"key": key, "model": model.state_dict(), "loss": loss_fn.state_dict(),
                          "optimizer": optimizer.state_dict(), "history": history, "best": best,
                          "best_score": best_score, "epoch": epoch, "rng": _rng(), "weights": best_weights},
                         replica={"rank": session.rank, "digest": _digest(model.state_dict()),
                                  "rows": sorted({int(r) for rows in mine for r in rows})})
            log.info("train epoch %d: loss %.4f, holdout P@%d %.4f (%d parameters trained)", epoch, record["loss"],
                     self.k, score, trainable)
        session.finish(history, best, best_weights)

    def _epoch_length(self, n: int) -> int:
        steps = self.steps_per_epoch or max(1, n // self.batch_size)
        return steps * self.batch_size

    def _loss(self, n_classes: int, dim: int) -> nn.Module:
        import inspect

        wanted = inspect.signature(self.loss_factory.func if hasattr(self.loss_factory, "func") else self.loss_factory).parameters
        extra = {name: value for name, value in (("num_classes", n_classes), ("embedding_size", dim)) if name in wanted}
        return self.loss_factory(**extra)  # proxies and class centres sized for this fold's labels

    def _augmentation(self, size: int):
        from torchvision.transforms import v2

        if not self.augment:
            return lambda x: x
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                           v2.ColorJitter(0.2, 0.2, 0.2, 0.02)])

    @torch.no_grad()
    def _holdout_score(self, embedder, images, labels, train_rows, held_rows, session) -> float:
        """P@k of the held-out rows among the training rows; each worker embeds its share of the rows,
        and the first worker's score is every worker's (so they all stop at the same epoch)."""
        if not len(held_rows):
            return 0.0
        embedder.eval()
        rows = np.concatenate([held_rows, train_rows])
        mine = rows[session.rank::session.world]
        part = torch.cat([embedder(images[chunk].to(session.device)).float()
                          for chunk in np.array_split(mine, max(1, -(-len(mine) // 64)))])
        emb = session.gather(part, len(rows)).cpu()
        n = len(held_rows)
        score = precision_at_k(emb[:n], labels[held_rows], emb[n:], labels[train_rows], self.k)
        return session.broadcast(score)


def _cpu_bf16() -> bool:
    from harness.backbones.base import cpu_has_bf16

    return cpu_has_bf16()


def _rng() -> dict:
    """The generators' states as tensors and numbers (a checkpoint loads with torch's weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state()}


def _set_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _copy(state: dict) -> dict:
    return {name: value.detach().clone() for name, value in state.items()}


def _digest(state: dict) -> str:
    """sha256 of a state dict's tensors in order: two workers' networks are the same iff equal."""
    h = hashlib.sha256()
    for name, value in state.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if value.numel() else b"")
    return h.hexdigest()


def save_atomically(obj, path: Path) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save(obj, partial)
    os.replace(partial, path)
