"""Everything MLflow: experiments, runs, params, metrics, artifacts, the sweep's parent run.

No other module imports mlflow.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import mlflow
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from harness.errors import HarnessError

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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


@contextmanager
def job_run(cfg: DictConfig, run_name: str):
    """One MLflow run per job, nested under the sweep's run during a multirun."""
    configure(cfg.tracking)
    parent = os.environ.get(SWEEP_ENV)
    with mlflow.start_run(run_name=run_name, parent_run_id=parent) as run:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        mlflow.log_params({k: v[:6000] for k, v in flatten(resolved).items()})
        mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        yield run.info.run_id


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    mlflow.log_metrics(finite, step=step)


def log_artifacts(paths: list[Path], subdir: str | None = None) -> None:
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path=subdir)


def run_url(run_id: str) -> str:
    run = MlflowClient().get_run(run_id)
    return f"experiment {run.info.experiment_id}, run {run_id}"


class SweepCallback(Callback):
    """Hydra callback: a multirun is one parent MLflow run with a child run per job."""

    def __init__(self):
        self.failures: list[str] = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if isinstance(job_return.return_value, HarnessError):
            self.failures.append(" ".join(config.hydra.overrides.task))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
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
