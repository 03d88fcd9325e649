"""The tracking interface: what a run logs and where, whatever keeps it.

A `Tracker` opens one `Job` per run (`with tracker.job(run_name, cfg) as job:`); the run logs its
params, metrics, per-fold metrics, artifacts and served model through the job and nothing else.
`tracking=mlflow` is `harness.tracking.mlflow_tracker.MlflowTracker`; `tracking=none` (or
`tracking=null`) is `NullTracker`, which keeps nothing: the run's metrics are returned, its
neighbours still go to the feature store. Another tracker is one subclass + one `conf/tracking` YAML.
"""
from __future__ import annotations

import json
import math
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as `a.b.c -> str` params."""
    out = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def finite(metrics: dict) -> dict[str, float]:
    """The metrics a tracker can store: NaN and missing scores are left out, not logged as numbers."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def write_artifact(obj, path: Path) -> None:
    """A table, a figure, an image, a dict (JSON) or a text as the file `path` names."""
    from matplotlib.figure import Figure
    from PIL import Image

    if isinstance(obj, pd.DataFrame):
        obj.to_csv(path, index=False)
    elif isinstance(obj, Figure):
        obj.savefig(path, dpi=110, bbox_inches="tight")
    elif isinstance(obj, Image.Image):
        obj.save(path)
    elif isinstance(obj, dict):
        path.write_text(json.dumps(obj, indent=2, default=str))
    elif isinstance(obj, str):
        path.write_text(obj)
    else:
        raise TypeError(f"cannot write artifact {path.name} of type {type(obj).__name__}")


class Job:
    """One run as its tracker keeps it. `tracked` is False when nothing leaves the process."""
    tracked = True

    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_params(self, params: dict[str, str]) -> None:
        raise NotImplementedError

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        raise NotImplementedError

    def log_folds(self, per_fold: list[dict[str, float]]) -> None:
        for fold, metrics in enumerate(per_fold):  # own keys: a tracker shows a key's highest step
            self.log_metrics({f"fold/{key}": v for key, v in metrics.items()}, step=fold)

    def log_artifacts(self, artifacts: dict) -> None:
        """`{file name: DataFrame | Figure | Image}`, written and kept with the run."""
        with tempfile.TemporaryDirectory() as tmp:
            for name, obj in artifacts.items():
                write_artifact(obj, Path(tmp) / name)
            self.log_folder(Path(tmp))

    def log_folder(self, folder: Path) -> None:
        raise NotImplementedError

    def log_weights(self, path: Path) -> str:
        """A fine-tuned network's weights file kept with the run as `train/weights.pt`; the URI that
        `backbone.weights=` loads it by."""
        import shutil

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "train").mkdir()
            shutil.copyfile(path, Path(tmp) / "train" / "weights.pt")
            self.log_folder(Path(tmp))
        return f"runs:/{self.run_id}/train/weights.pt"

    def set_description(self, text: str) -> None:
        """A few lines shown with the run (MLflow: its description); nowhere by default."""

    def log_datasets(self, records: list) -> None:
        """What the scores were measured on (harness.data.lineage.DatasetRecord); kept where the tracker
        can show it (MLflow: the run's Datasets), else nowhere."""

    def log_model(self, directory: Path, register_as: str | None, score: float | None = None) -> str:
        """The served searcher's files as a model; registered as `register_as` when given. Its URI."""
        raise NotImplementedError


class Tracker:
    """Where jobs are kept. Built from `conf/tracking/<name>.yaml`."""

    def check(self) -> None:
        """Before any work: the tracker can be written, in one line if not."""

    @contextmanager
    def job(self, run_name: str, cfg=None):
        """One run; `cfg` (the run's config) is logged as its params. Ctrl-C or SIGTERM end it as killed."""
        raise NotImplementedError
        yield

    def sweep_host(self) -> str | None:
        """The machine that launched this job's sweep (None outside a tracked sweep)."""
        return None

    def interrupted(self) -> None:
        """Ctrl-C or SIGTERM: what this process left open (a sweep's parent run) ends as killed."""

    def where(self) -> str | None:
        """One line for the run's summary: where its results are, or None."""
        return None

    def download(self, uri: str, into: Path) -> Path:
        """A run's or a registered model's artifact (`runs:/<run_id>/<path>`, `models:/<name>/<version>`)
        as a local file under `into`, or one line why not."""
        raise HarnessError(f"{uri} names a tracked run's artifact: it needs tracker=mlflow (the tracker that "
                           "logged it), not this tracker.")


class NullJob(Job):
    tracked = False

    def __init__(self):
        super().__init__(f"local-{uuid.uuid4().hex[:12]}")

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step=None):
        pass

    def log_folder(self, folder):
        pass

    def log_model(self, directory, register_as, score=None):
        raise HarnessError("serving.log_model needs tracking (an MLflow store to log the model to).")


class NullTracker(Tracker):
    """tracking=none (or null): nothing leaves the process."""

    @contextmanager
    def job(self, run_name: str, cfg=None):
        yield NullJob()


def build_tracker(cfg) -> Tracker:
    """The run's tracker from `cfg.tracking` (null: a NullTracker)."""
    from harness.config import instantiate

    spec = cfg.get("tracking")
    return instantiate(spec) if spec is not None else NullTracker()
