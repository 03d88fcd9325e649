"""tracking=mlflow: one MLflow run per job, nested under its sweep's parent run during a multirun."""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import mlflow
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from harness import liveness
from harness.errors import HarnessError
from harness.tracking.base import Job, Tracker, finite, flatten
from harness.tracking.heartbeat import Heartbeat, identity
from harness.tracking.models import log_search_model, register_champion
from harness.tracking.mlflow_store import MlflowStore


def sweep_dir() -> str | None:
    """The output folder of the multirun this job belongs to (None outside a multirun)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


class MlflowJob(Job):
    def __init__(self, run_id: str, in_sweep: bool):
        super().__init__(run_id)
        self.in_sweep = in_sweep

    def log_params(self, params):
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics, step=None):
        mlflow.log_metrics(finite(metrics), step=step)

    def log_folder(self, folder: Path) -> None:
        mlflow.log_artifacts(str(folder))

    def set_description(self, text):
        mlflow.set_tag("mlflow.note.content", text)

    def log_datasets(self, records):
        for r in records:
            dataset = mlflow.data.from_pandas(r.table, source=r.source, name=r.name, digest=r.digest)
            mlflow.log_input(dataset, context=r.context, tags=r.tags)

    def log_model(self, directory, register_as, score=None):
        """Outside a sweep, `register_as` registers the model as that name's champion at once if its
        selection `score` is a finite number; in a sweep the SweepCallback registers the best child."""
        uri = log_search_model(directory)
        if register_as and not self.in_sweep:
            if score is None or not math.isfinite(score):
                print(f"not registering {register_as}: its selection metric is {score}", file=sys.stderr)
            else:
                register_champion(self.run_id, register_as)
        return uri


class MlflowTracker(Tracker):
    """`uri`, `experiment`, `artifact_root`: see `MlflowStore`."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.store = MlflowStore(uri, experiment, artifact_root)
        self.heartbeat = Heartbeat()

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def experiment(self) -> str:
        return self.store.experiment

    def check(self) -> None:
        self.store.check()

    def sweep_run(self) -> str | None:
        """The parent run of this job's sweep, found by the sweep's output folder (every job of one
        multirun has the same, wherever it runs), not by a variable a remote launcher would not pass on."""
        folder = sweep_dir()
        if folder is None:
            return None
        runs = self.store.client.search_runs([self.store.connect()], f"tags.`harness.sweep_dir` = '{folder}'",
                                             order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def sweep_host(self) -> str | None:
        sweep = self.sweep_run()
        process = self.store.client.get_run(sweep).data.tags.get("harness.process", "") if sweep else ""
        return process.rsplit(":", 2)[0] or None

    @contextmanager
    def job(self, run_name: str, cfg=None):
        self.store.connect()
        tags = identity()
        if HydraConfig.initialized():
            tags["harness.overrides"] = " ".join(HydraConfig.get().overrides.task)
        parent = self.sweep_run()
        with mlflow.start_run(run_name=run_name, parent_run_id=parent, tags=tags) as run:
            self.heartbeat.add(run.info.run_id)
            job = MlflowJob(run.info.run_id, in_sweep=sweep_dir() is not None)
            try:
                if cfg is not None:
                    job.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
                    mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
                yield job
            except KeyboardInterrupt:
                mlflow.end_run(status="KILLED")
                raise
            finally:
                self.heartbeat.discard(run.info.run_id)

    def interrupted(self) -> None:
        """The sweep's parent run ends as KILLED if this process opened it (its jobs' runs did already)."""
        try:
            sweep = self.sweep_run()
            if sweep and self.store.client.get_run(sweep).data.tags.get("harness.process") == liveness.me():
                self.store.client.set_terminated(sweep, status="KILLED")
        except Exception:  # an interrupted process says so in one line, whatever the store does
            pass

    def where(self) -> str:
        return f"results: MLflow {self.uri} (experiment '{self.experiment}'); open the UI: make ui"

    def download(self, uri: str, into: Path) -> Path:
        self.store.connect()
        into.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
        except Exception as exc:  # no such run, artifact or model: one line, whatever MLflow raised
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(f"backbone.weights={uri}: not found in MLflow {self.uri} ({first}).") from None
        if not local.is_file():
            raise HarnessError(f"backbone.weights={uri} names a folder, not a weights file.")
        return local
