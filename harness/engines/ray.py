"""engine=ray: decoding and embedding on a Ray cluster's workers, the feature store on the driver.

Ray Data's batch-inference shape: the rows the store lacks → `map_batches` with an actor class
(`EmbedWorker`) that builds the backbone and preprocessing from the run's resolved config (no model
crosses the wire) → the driver streams the features into the store batch by batch. Workers read the
image files themselves, so every node must see the catalog at the same path (README "Scaling out").
Ray restarts a killed worker and retries its batches; the driver stores each image once.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import numpy as np

from harness.errors import HarnessError
from harness.engines.base import Engine, Job, Result, decode_batch, embed_batch, load

log = logging.getLogger(__name__)


class EmbedWorker:
    """One Ray actor: the run's backbone and preprocessing, built from its config where it runs."""

    def __init__(self, config: dict, runtime, batch_size: int, expected: str, calibration=None):
        import ray
        from omegaconf import OmegaConf

        from harness.backbones import build_backbone
        from harness.backbones.base import describe
        from harness.preprocess import build_preprocess

        cfg = OmegaConf.create(config)
        self.backbone = build_backbone(cfg, runtime=runtime)
        self.preprocess = build_preprocess(cfg.preprocess, self.backbone)
        if calibration is not None:  # int8: the driver's sample (the files checked against their hashes if read)
            self.backbone.calibrate(calibration, self.preprocess)
        self.backbone.prepare(batch_size)
        built = describe(self.backbone.fingerprint, self.preprocess.fingerprint())[0]
        if built != expected:  # another library version or device: its features would not be the driver's
            raise HarnessError(f"a Ray worker on node {ray.get_runtime_context().get_node_id()[:8]} builds "
                               f"another network than the driver ({self.backbone.fingerprint}); install the "
                               f"same versions on every node, or set runtime=... and backbone.precision.")
        context = ray.get_runtime_context()
        self.node, self.worker = context.get_node_id(), context.get_actor_id()

    def __call__(self, batch: dict) -> dict:
        boxes = batch.get("box", [None] * len(batch["row"]))  # rows without a box carry NaNs (Arrow: one shape)
        decoded = decode_batch([(row, *load(str(p), self.preprocess, None if b is None or np.isnan(b[0]) else tuple(b)))
                                for row, p, b in zip(batch["row"], batch["path"], boxes)])
        t0 = time.perf_counter()
        results = embed_batch(self.backbone, decoded)
        seconds = {**decoded.seconds, "embed": time.perf_counter() - t0}
        out = np.zeros((len(results), self.backbone.dim), np.float32)  # a row per image: Arrow needs one shape
        for n, (_, _, vec, _) in enumerate(results):
            if vec is not None:
                out[n] = vec
        return {"row": batch["row"], "hash": np.array([h or "" for _, h, _, _ in results], dtype=object),
                "vector": out, "reason": np.array([r for _, _, _, r in results], dtype=object),
                "node": np.array([self.node] * len(results), dtype=object),
                "worker": np.array([self.worker] * len(results), dtype=object),
                # the batch's stage seconds on its first row (Arrow wants a value per row)
                **{f"seconds_{stage}": np.array([value] + [0.0] * (len(results) - 1)) for stage, value in seconds.items()}}


class RayEngine(Engine):
    """`engine.*`: address (null: a local Ray instance, or the cluster `ray start` made on this
    machine; `auto`: the running cluster; `ray://host:10001`), workers (actor pool size or [min, max]),
    num_cpus and num_gpus per worker."""

    def __init__(self, config: dict | None = None, address: str | None = None, workers=2, num_cpus: float = 1,
                 num_gpus: float = 0):
        super().__init__(config)
        if config is None:
            raise HarnessError("engine=ray builds the backbone on each worker from the run's config.")
        sizes = list(workers) if isinstance(workers, (list, tuple)) else [workers]
        if not sizes or len(sizes) > 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes) \
                or sizes != sorted(sizes):
            raise HarnessError(f"engine.workers must be a whole number >= 1 or [min, max]; got {workers!r}.")
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise HarnessError(f"engine.{name} must be a number >= 0; got {value!r}.")
        self.address, self.sizes = address, sizes
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    def _connect(self) -> bool:
        """Join or start Ray; True when this call started it (and so shuts it down)."""
        import ray

        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False, runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
        except ConnectionError as exc:
            raise HarnessError(f"engine.address={self.address!r}: no Ray cluster there ({exc}). "
                               "Start one with `ray start --head`, or use address=null for a local one.") from None
        return True

    def batches(self, job: Job) -> Iterator[list[Result]]:
        import ray
        from ray.data import ActorPoolStrategy, DataContext

        from harness.backbones.base import describe

        t0 = time.perf_counter()
        # One claim for everything shipped: the rows are handed to Ray at once. A lease of a day; a run
        # that dies is recognised by its process, not by the lease.
        mine = job.claim(job.pending, lease=86400.0)
        rows = [i for i in job.pending if i in mine]
        if not rows:
            return
        started = self._connect()
        try:
            context = DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            pool = ActorPoolStrategy(size=self.sizes[0]) if len(self.sizes) == 1 else \
                ActorPoolStrategy(min_size=self.sizes[0], max_size=self.sizes[1])
            expected = describe(job.backbone.fingerprint, job.preprocess.fingerprint())[0]
            # A claim block per call, like the local engine (one batch per call spent a quarter of the time in
            # Ray's per-call overhead: 2 workers 0.76x the local engine vs 0.92x, one run), but at least
            # four calls per worker, so a small job still reaches every worker.
            per_worker = len(rows) // (4 * self.sizes[-1]) // job.batch_size * job.batch_size
            chunk = max(job.batch_size, min(job.claim_block, per_worker))
            data = ray.data.from_items([{"row": i, "path": os.path.abspath(job.paths[i]),
                                         **({"box": list(job.box(i) or (float("nan"),) * 4)} if job.boxes else {})}
                                        for i in rows],
                                       override_num_blocks=max(1, min(len(rows) // chunk, 200)))
            data = data.map_batches(EmbedWorker, batch_size=chunk, batch_format="numpy", compute=pool,
                                    num_cpus=self.num_cpus, num_gpus=self.num_gpus or None,
                                    fn_constructor_kwargs={"config": self.config, "runtime": job.backbone.runtime,
                                                           "batch_size": job.batch_size, "expected": expected,
                                                           "calibration": job.backbone.calibration})
            nodes, workers = {}, {}
            for batch in data.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                if not self.startup_images:  # connecting, starting workers, building networks, first batch
                    self.metrics["engine_startup_seconds"] = time.perf_counter() - t0
                    self.startup_images = len(batch["row"])
                self.count({key.removeprefix("seconds_"): values.sum() for key, values in batch.items()
                            if key.startswith("seconds_")})
                for node, worker, reason in zip(batch["node"], batch["worker"], batch["reason"]):
                    if not reason:
                        nodes[node] = nodes.get(node, 0) + 1
                        workers[worker] = workers.get(worker, 0) + 1
                yield [(int(r), h or None, v, str(why)) for r, h, v, why in
                       zip(batch["row"], batch["hash"], batch["vector"], batch["reason"])]
            self.metrics.update({"ray_nodes": len(nodes), "ray_workers": len(workers)})
            log.info("ray: %d images embedded by %d workers on %d nodes", sum(nodes.values()), len(workers),
                     len(nodes))
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, HarnessError):
                raise cause from None
            raise
        finally:
            if started:
                ray.shutdown()
