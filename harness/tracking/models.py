"""The served searcher as an MLflow pyfunc model (models-from-code), the registry and its champion."""
from __future__ import annotations

import importlib.metadata
import logging
import warnings
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from harness.errors import HarnessError

log = logging.getLogger(__name__)
DISTRIBUTION = "fashion-retrieval-harness"
MODEL_CODE = Path(__file__).resolve().parent.parent / "serving" / "mlflow_model.py"


def _requirements() -> list[str] | None:
    """The project's own runtime requirements. Left to itself, MLflow infers them by importing the model
    in a subprocess, which costs most of a cached sweep job."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return None
    return [r for r in requires if "extra ==" not in r]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from harness.serving.searcher import SearchOptions

    kinds = {int: "long", bool: "boolean", str: "string", float: "double"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False),
                       ColSpec("string", "terms", required=False)]),
        params=ParamSchema([ParamSpec(name, kinds[kind], default) for name, kind, default in SearchOptions.spec()]))


def log_search_model(searcher_dir: Path) -> str:
    """Log the searcher files as a pyfunc model with the active run; returns its model URI."""
    with warnings.catch_warnings():
        # The signature is the contract; predict() also takes a plain list, which MLflow's type-hint
        # validation cannot express, and an input example would be a photo MLflow runs through the network
        # while logging. Its advice about both is noise in every run's console.
        warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method")
        warnings.filterwarnings("ignore", message=r".*An input example was not provided")
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                       artifacts={"searcher": str(searcher_dir)}, signature=signature(),
                                       pip_requirements=_requirements())
    mlflow.set_tag("harness.model_uri", info.model_uri)
    return info.model_uri


def register_champion(run_id: str, model_name: str, alias: str = "champion") -> int:
    """Register the model `run_id` logged as a new version of `model_name`, and point `alias` at it."""
    client = MlflowClient()
    uri = client.get_run(run_id).data.tags.get("harness.model_uri")
    if not uri:
        raise HarnessError(f"Run {run_id} logged no model (serving.log_model was false).")
    version = mlflow.register_model(uri, model_name)
    client.set_registered_model_alias(model_name, alias, version.version)
    client.set_model_version_tag(model_name, version.version, "run_id", run_id)
    log.info("registered %s version %s as @%s (run %s)", model_name, version.version, alias, run_id)
    return int(version.version)


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


def champion_uri(cfg) -> str:
    """The served model: serving.model_name's champion."""
    return f"models:/{cfg.serving.model_name}@champion"


def load_served(cfg, model_uri: str | None = None):
    """(pyfunc model, Searcher, model_info) of `model_uri` (default: the champion) in cfg's MLflow store."""
    from harness.tracking.base import build_tracker

    build_tracker(cfg).store.connect()
    uri = model_uri or champion_uri(cfg)
    model, searcher = load_model(uri)
    return model, searcher, model_info(uri)
