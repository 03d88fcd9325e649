"""Everything MLflow: experiments, runs, params, metrics, artifacts, the sweep's parent run.

No other module imports mlflow.
"""
from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import sys
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from harness.errors import HarnessError

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
DISTRIBUTION = "fashion-retrieval-harness"
SWEEP_ENV = "HARNESS_SWEEP_RUN_ID"  # set while a Hydra multirun is going: its jobs become child runs


def configure(tracking: DictConfig) -> str:
    """Point MLflow at the configured store; create the experiment with artifacts beside the DB."""
    if tracking.uri.startswith("sqlite:///"):
        Path(tracking.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking.uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.experiment)
    if exp is None:
        root = Path(tracking.artifact_root).resolve() / tracking.experiment
        exp_id = client.create_experiment(tracking.experiment, artifact_location=root.as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def enabled(cfg) -> bool:
    """`tracking=null` or `tracking.enabled=false`: run without MLflow (metrics are returned only)."""
    spec = cfg.get("tracking")
    return spec is not None and bool(spec.get("enabled", True))


def _write(obj, path: Path) -> None:
    from matplotlib.figure import Figure
    from PIL import Image

    if isinstance(obj, pd.DataFrame):
        obj.to_csv(path, index=False)
    elif isinstance(obj, Figure):
        obj.savefig(path, dpi=110, bbox_inches="tight")
    elif isinstance(obj, Image.Image):
        obj.save(path)
    else:
        raise TypeError(f"cannot write artifact {path.name} of type {type(obj).__name__}")


class Job:
    """One run as MLflow sees it; the rest of the harness logs through this and nothing else."""
    tracked = True

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        mlflow.log_metrics(finite, step=step)

    def log_folds(self, per_fold: list[dict[str, float]]) -> None:
        for fold, metrics in enumerate(per_fold):  # own keys: MLflow shows a key's highest step
            self.log_metrics({f"fold/{key}": v for key, v in metrics.items()}, step=fold)

    def log_artifacts(self, artifacts: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, obj in artifacts.items():
                _write(obj, Path(tmp) / name)
            mlflow.log_artifacts(tmp)

    def log_search_model(self, directory: Path, register_as: str | None) -> str:
        return log_search_model(directory, register_as)


class LocalJob(Job):
    """tracking disabled: nothing leaves the process (the neighbours still go to the feature store)."""
    tracked = False

    def __init__(self):
        super().__init__(f"local-{uuid.uuid4().hex[:12]}")

    def log_metrics(self, metrics, step=None):
        pass

    def log_artifacts(self, artifacts):
        pass

    def log_search_model(self, directory, register_as):
        raise HarnessError("serving.log_model needs tracking (an MLflow store to log the model to).")


@contextmanager
def job_run(cfg: DictConfig, run_name: str):
    """One MLflow run per job, nested under the sweep's run during a multirun."""
    if not enabled(cfg):
        yield LocalJob()
        return
    configure(cfg.tracking)
    parent = os.environ.get(SWEEP_ENV)
    with mlflow.start_run(run_name=run_name, parent_run_id=parent) as run:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        mlflow.log_params({k: v[:6000] for k, v in flatten(resolved).items()})
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield Job(run.info.run_id)


class SweepCallback(Callback):
    """Hydra callback: a multirun is one parent MLflow run with a child run per job."""

    def __init__(self):
        self.failures: list[str] = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if isinstance(job_return.return_value, HarnessError):
            self.failures.append(" ".join(config.hydra.overrides.task))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not enabled(config):
            return
        exp_id = configure(config.tracking)
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(exp_id, run_name=f"sweep {overrides}".strip(),
                                        tags={"harness.sweep": "true", "harness.overrides": overrides})
        os.environ[SWEEP_ENV] = run.info.run_id
        log.info("sweep run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        run_id = os.environ.pop(SWEEP_ENV, None)
        if run_id:
            MlflowClient().set_terminated(run_id, status="FAILED" if self.failures else "FINISHED")
            if config.serving.log_model and config.serving.register:
                children = [c for c in sweep_children(config.tracking, run_id) if "harness.model_uri" in
                            MlflowClient().get_run(c["run_id"]).data.tags]
                if children:
                    best = select_champion(children, config.selection.metric)
                    register_champion(best["run_id"], config.serving.model_name)
        if self.failures:
            log.error("%d job(s) failed: %s", len(self.failures), "; ".join(self.failures))
            sys.exit(2)


# Reading runs back (the sweep report, champion selection).

def latest_sweep(tracking: DictConfig) -> str:
    exp_id = configure(tracking)
    runs = MlflowClient().search_runs([exp_id], "tags.`harness.sweep` = 'true'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise HarnessError(f"No sweep in experiment '{tracking.experiment}' at {tracking.uri}; run "
                           "`python -m harness -m ...` first or pass --sweep RUN_ID.")
    return runs[0].info.run_id


def sweep_children(tracking: DictConfig, sweep_id: str) -> list[dict]:
    """Finished child runs of a sweep: run id, params, metrics."""
    exp_id = configure(tracking)
    runs = MlflowClient().search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{sweep_id}'",
                                      order_by=["attributes.start_time ASC"])
    return [{"run_id": r.info.run_id, "params": r.data.params, "metrics": r.data.metrics}
            for r in runs if r.info.status == "FINISHED"]


def read_csv_artifact(run_id: str, name: str, dst: Path):
    import pandas as pd

    try:
        return pd.read_csv(MlflowClient().download_artifacts(run_id, name, str(dst)))
    except Exception:  # older runs may lack the artifact
        return None


def log_artifacts_to(run_id: str, paths: list[Path], subdir: str | None = None) -> None:
    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=subdir)


# Serving: the searcher as an MLflow model, and the registry.

MODEL_CODE = Path(__file__).resolve().parent / "serving" / "mlflow_model.py"


def _model_requirements() -> list[str] | None:
    """The project's own runtime requirements. Left to itself, MLflow infers them by importing the model
    in a subprocess, which costs most of a cached sweep job."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return None
    return [r for r in requires if "extra ==" not in r]


def log_search_model(searcher_dir: Path, register_as: str | None = None) -> str:
    """Log the searcher files as a pyfunc model (models-from-code); returns its model URI.

    Outside a sweep, `register_as` registers it as that model's champion at once; in a sweep the
    SweepCallback registers the best child when the sweep ends.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        params=ParamSchema([ParamSpec("k", "long", 5), ParamSpec("within_category", "boolean", False),
                            ParamSpec("rerank_column", "string", ""), ParamSpec("rerank_weight", "double", 0.0)]))
    with warnings.catch_warnings():
        # The signature above is the contract; predict() also takes a plain list, which MLflow's type-hint
        # validation cannot express, and an input example would be a photo MLflow runs through the network
        # while logging. Its advice about both is noise in every run's console.
        warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method")
        warnings.filterwarnings("ignore", message=r".*An input example was not provided")
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                       artifacts={"searcher": str(searcher_dir)}, signature=signature,
                                       pip_requirements=_model_requirements())
    mlflow.set_tag("harness.model_uri", info.model_uri)
    if register_as and not os.environ.get(SWEEP_ENV):
        register_champion(mlflow.active_run().info.run_id, register_as)
    return info.model_uri


def register_champion(run_id: str, model_name: str, alias: str = "champion") -> int:
    client = MlflowClient()
    uri = client.get_run(run_id).data.tags.get("harness.model_uri")
    if not uri:
        raise HarnessError(f"Run {run_id} logged no model (serving.log_model was false).")
    version = mlflow.register_model(uri, model_name)
    client.set_registered_model_alias(model_name, alias, version.version)
    client.set_model_version_tag(model_name, version.version, "run_id", run_id)
    log.info("registered %s version %s as @%s (run %s)", model_name, version.version, alias, run_id)
    return int(version.version)


def select_champion(children: list[dict], metric: str) -> dict:
    """Best child by `metric` (its cross-validated mean when present); ties → the faster extractor."""
    speed = {}
    for c in children:
        arch = c["params"].get("backbone.arch")
        speed[arch] = max(speed.get(arch, 0.0), c["metrics"].get("images_per_second", 0.0))
    scored = [c for c in children if f"{metric}_mean" in c["metrics"] or metric in c["metrics"]]
    if not scored:
        raise HarnessError(f"No run of the sweep logged {metric}.")

    def key(c):
        m = c["metrics"]
        return (m.get(f"{metric}_mean", m.get(metric)), speed.get(c["params"].get("backbone.arch"), 0.0))
    return max(scored, key=key)


def load_model(model_uri: str):
    """The pyfunc model and, unwrapped, its Searcher (the demo calls the searcher directly)."""
    model = mlflow.pyfunc.load_model(model_uri)
    return model, model.unwrap_python_model().searcher


def model_info(model_uri: str) -> dict:
    """Which run answers: run id, name and params of the model behind a models:/ URI."""
    client = MlflowClient()
    info = {"model_uri": model_uri}
    if model_uri.startswith("models:/") and "@" in model_uri:
        name, alias = model_uri.removeprefix("models:/").split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
        info.update(version=version.version, run_id=version.tags.get("run_id") or version.run_id)
    if info.get("run_id"):
        run = client.get_run(info["run_id"])
        info.update(run_name=run.info.run_name, metrics=run.data.metrics)
    return info
