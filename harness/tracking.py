"""Everything MLflow: experiments, runs, params, metrics, artifacts, the sweep's parent run.

No other module imports mlflow. Besides logging, this module keeps the store usable whatever happens
to a run: the database is created under a file lock (MLflow's schema creation races between
processes), an unreachable or unwritable store fails in one line before any work, an interrupted run
is marked KILLED, and a run left RUNNING by a killed process is recognised (its process is gone, or
its heartbeat stopped) so that reports and the champion never use an unfinished sweep.
"""
from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
import pandas as pd
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from harness.config import check_writable_dir
from harness import liveness
from harness.errors import HarnessError

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A tracking server that fails every call: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout)
# retry for minutes before the one line (262 s seen). Four retries, backoff factor 1: about 15 s in all.
# The user's own settings of these variables win.
for _name, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                      ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")):
    os.environ.setdefault(_name, _value)
DISTRIBUTION = "fashion-retrieval-harness"
HEARTBEAT_SECONDS = 30   # a RUNNING run whose heartbeat is older than 4 of these has lost its process
PROBE_SECONDS = 3        # an HTTP tracking server must answer /health within this


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check(tracking: DictConfig) -> None:
    """Before any work: the store can be written (sqlite) or answers (http), in one line if not."""
    uri = tracking.uri
    path = _sqlite_path(uri)
    if path is not None:
        check_writable_dir(path.parent, f"tracking.uri={uri}")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise HarnessError(f"tracking.uri={uri}: cannot write {path}.")
        check_writable_dir(tracking.artifact_root, f"tracking.artifact_root={tracking.artifact_root}")
    elif uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=PROBE_SECONDS) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HarnessError(f"tracking.uri={uri}: no MLflow server answers there within {PROBE_SECONDS} s "
                               f"({reason}). Start one (README: Scaling out) or use a sqlite:/// store.") from None
        # /health answers even when the server's store is down: one real API call must answer too
        # (a 404 for an experiment that does not exist yet is an answer).
        name = urllib.parse.quote(str(tracking.experiment))
        try:
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={name}",
                                        timeout=PROBE_SECONDS) as response:
                response.read(64)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise HarnessError(f"tracking.uri={uri}: the MLflow server answers /health but its API fails "
                                   f"(HTTP {exc.code} {exc.reason}); check the server's log and its store.") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise HarnessError(f"tracking.uri={uri}: the MLflow server's API does not answer within {PROBE_SECONDS} s "
                               f"({getattr(exc, 'reason', exc)}).") from None


_configured: dict[tuple[str, str], str] = {}


def configure(tracking: DictConfig) -> str:
    """Point MLflow at the configured store (created or upgraded under a file lock beside a SQLite
    database, so concurrent first runs cannot race in MLflow's migrations); create the experiment with
    its artifacts beside the database (a tracking server: where the server keeps them). Returns the
    experiment id."""
    key = (tracking.uri, tracking.experiment)
    mlflow.set_tracking_uri(tracking.uri)
    if key not in _configured:
        check(tracking)
        path = _sqlite_path(tracking.uri)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock") if path is not None else nullcontext():
                client = MlflowClient()
                exp = client.get_experiment_by_name(tracking.experiment)  # creates the schema if needed
                if exp is None:
                    # A tracking server keeps artifacts where `mlflow server --artifacts-destination` says,
                    # which every machine reaches through it; a local folder is only for a local database.
                    root = Path(tracking.artifact_root).resolve() / tracking.experiment
                    client.create_experiment(tracking.experiment,
                                             artifact_location=root.as_uri() if path is not None else None)
                    exp = client.get_experiment_by_name(tracking.experiment)
        except MlflowException as exc:
            first = str(exc.message).strip().splitlines()[0][:300] if str(exc.message).strip() else type(exc).__name__
            raise HarnessError(f"tracking.uri={tracking.uri}: the MLflow store cannot be used ({first}).") from None
        except OSError as exc:
            raise HarnessError(f"tracking.uri={tracking.uri}: cannot create it ({exc.strerror}).") from None
        _configured[key] = exp.experiment_id
    mlflow.set_experiment(experiment_id=_configured[key])
    return _configured[key]


# -- liveness: which RUNNING runs still have a process behind them -------------------------------

def _identity() -> dict[str, str]:
    return {"harness.process": liveness.me(), "harness.heartbeat": str(int(time.time()))}


def run_state(run) -> str:
    """finished | failed | killed | running | lost (RUNNING, but its process is gone)."""
    status = run.info.status
    if status != "RUNNING":
        return status.lower()
    tags = run.data.tags
    here = liveness.alive(tags["harness.process"]) if "harness.process" in tags else None
    if here is not None:
        return "running" if here else "lost"
    beat = tags.get("harness.heartbeat")
    if beat is None or time.time() - float(beat) > 4 * HEARTBEAT_SECONDS:
        return "lost"
    return "running"


class _Heartbeat:
    """Refreshes `harness.heartbeat` on this process's open runs, so other machines can tell them alive."""

    def __init__(self):
        self.runs: set[str] = set()
        self._thread: threading.Thread | None = None

    def add(self, run_id: str) -> None:
        self.runs.add(run_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            for run_id in list(self.runs):
                try:
                    MlflowClient().set_tag(run_id, "harness.heartbeat", str(int(time.time())))
                except Exception:  # a missed beat is no reason to disturb the run
                    pass


_heartbeat = _Heartbeat()
_open_sweeps: set[str] = set()


def interrupted() -> None:
    """Ctrl-C or SIGTERM: the open sweep runs of this process end as KILLED (job runs did already)."""
    for run_id in list(_open_sweeps):
        try:
            MlflowClient().set_terminated(run_id, status="KILLED")
        except Exception:
            pass
        _open_sweeps.discard(run_id)
        _heartbeat.runs.discard(run_id)


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

    def log_search_model(self, directory: Path, register_as: str | None, score: float | None = None) -> str:
        return log_search_model(directory, register_as, score)


class LocalJob(Job):
    """tracking disabled: nothing leaves the process (the neighbours still go to the feature store)."""
    tracked = False

    def __init__(self):
        super().__init__(f"local-{uuid.uuid4().hex[:12]}")

    def log_metrics(self, metrics, step=None):
        pass

    def log_artifacts(self, artifacts):
        pass

    def log_search_model(self, directory, register_as, score=None):
        raise HarnessError("serving.log_model needs tracking (an MLflow store to log the model to).")


def _sweep_dir() -> str | None:
    """The output folder of the multirun this job belongs to (None outside a multirun)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().sweep.dir)


def _sweep_run_id(exp_id: str) -> str | None:
    """The parent run of this job's sweep, found by the sweep's output folder (every job of one multirun
    has the same, wherever it runs), not by a variable a remote launcher would not pass on."""
    sweep_dir = _sweep_dir()
    if sweep_dir is None:
        return None
    runs = MlflowClient().search_runs([exp_id], f"tags.`harness.sweep_dir` = '{sweep_dir}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_host(cfg: DictConfig) -> str | None:
    """The machine that launched this job's sweep (None outside a tracked sweep)."""
    if not enabled(cfg) or _sweep_dir() is None:
        return None
    sweep = _sweep_run_id(configure(cfg.tracking))
    process = MlflowClient().get_run(sweep).data.tags.get("harness.process", "") if sweep else ""
    return process.rsplit(":", 2)[0] or None


def expected_jobs(config: DictConfig) -> int:
    """How many jobs the sweep's overrides make (Hydra's basic sweeper: the cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


@contextmanager
def job_run(cfg: DictConfig, run_name: str):
    """One MLflow run per job, nested under the sweep's run during a multirun. Ctrl-C or SIGTERM end
    it as KILLED."""
    if not enabled(cfg):
        yield LocalJob()
        return
    exp_id = configure(cfg.tracking)
    tags = _identity()
    if HydraConfig.initialized():
        tags["harness.overrides"] = " ".join(HydraConfig.get().overrides.task)
    with mlflow.start_run(run_name=run_name, parent_run_id=_sweep_run_id(exp_id), tags=tags) as run:
        _heartbeat.add(run.info.run_id)
        try:
            resolved = OmegaConf.to_container(cfg, resolve=True)
            mlflow.log_params({k: v[:6000] for k, v in flatten(resolved).items()})
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            yield Job(run.info.run_id)
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")
            raise
        finally:
            _heartbeat.runs.discard(run.info.run_id)


class SweepCallback(Callback):
    """Hydra callback: a multirun is one parent MLflow run with a child run per job. The parent ends
    FINISHED only when every job succeeded; only then is the champion registered."""

    def __init__(self):
        self.failures: list[str] = []
        self.run_id: str | None = None

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if job_return.status != JobStatus.COMPLETED or isinstance(job_return._return_value, HarnessError):
            self.failures.append(" ".join(config.hydra.overrides.task))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if not enabled(config):
            return
        exp_id = configure(config.tracking)
        overrides = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(exp_id, run_name=f"sweep {overrides}".strip(), tags={
            "harness.sweep": "true", "harness.overrides": overrides, "harness.sweep_dir": str(config.hydra.sweep.dir),
            **_identity()})
        self.run_id = run.info.run_id
        _open_sweeps.add(self.run_id)
        _heartbeat.add(self.run_id)
        log.info("sweep run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id:
            client = MlflowClient()
            # A launcher that runs jobs elsewhere (Ray, joblib) calls on_job_end there, not here: count
            # the jobs that finished a run against the jobs the sweep made.
            finished = len(sweep_children(config.tracking, self.run_id))
            missing = expected_jobs(config) - finished
            if missing > len(self.failures):
                self.failures += [f"{missing - len(self.failures)} job(s) without a finished run"]
            client.set_tag(self.run_id, "harness.jobs_failed", str(len(self.failures)))
            client.set_terminated(self.run_id, status="FAILED" if self.failures else "FINISHED")
            _open_sweeps.discard(self.run_id)
            _heartbeat.runs.discard(self.run_id)
            if config.serving.log_model and config.serving.register:
                if self.failures:
                    print(f"not registering a champion: {len(self.failures)} job(s) of the sweep failed "
                          f"(python -m harness.register --sweep {self.run_id} --allow-incomplete does it anyway)",
                          file=sys.stderr)
                else:
                    children = [c for c in sweep_children(config.tracking, self.run_id) if c["model_uri"]]
                    if children:
                        best = select_champion(children, config.selection.metric)
                        register_champion(best["run_id"], config.serving.model_name)
        if self.failures:
            print(f"error: {len(self.failures)} job(s) failed: {'; '.join(self.failures)}", file=sys.stderr)
            sys.exit(2)


# Reading runs back (the sweep report, champion selection).

def pick_sweep(tracking: DictConfig, sweep_id: str | None = None, allow_incomplete: bool = False) -> str:
    """The sweep to report on or pick the champion from: `sweep_id`, or the newest whose every job
    finished. A sweep that did not finish (still running, killed, lost its process, had failed jobs)
    is used only with `allow_incomplete`, and every one passed over is named."""
    exp_id = configure(tracking)
    client = MlflowClient()
    if sweep_id:
        run = client.get_run(sweep_id)
        state = run_state(run)
        if state != "finished" and not allow_incomplete:
            raise HarnessError(f"sweep {sweep_id} did not finish ({_describe(run, state)}); pass "
                               "--allow-incomplete to use its finished runs anyway.")
        return sweep_id
    runs = client.search_runs([exp_id], "tags.`harness.sweep` = 'true'", order_by=["attributes.start_time DESC"])
    for run in runs:
        state = run_state(run)
        if state == "finished" or allow_incomplete:
            return run.info.run_id
        print(f"skipping sweep {run.info.run_id} ({run.info.run_name}): {_describe(run, state)}", file=sys.stderr)
    raise HarnessError(f"No finished sweep in experiment '{tracking.experiment}' at {tracking.uri}; run "
                       "`python -m harness -m ...` first, or pass --sweep RUN_ID --allow-incomplete.")


def _describe(run, state: str) -> str:
    failed = run.data.tags.get("harness.jobs_failed")
    return {"running": "still running", "lost": "left RUNNING by a process that is gone (killed?)",
            "killed": "interrupted", "failed": f"{failed or 'some'} job(s) failed"}.get(state, state)


def sweep_children(tracking: DictConfig, sweep_id: str) -> list[dict]:
    """Finished child runs of a sweep: run id, params, metrics, logged model."""
    exp_id = configure(tracking)
    runs = MlflowClient().search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{sweep_id}'",
                                      order_by=["attributes.start_time ASC"])
    return [{"run_id": r.info.run_id, "params": r.data.params, "metrics": r.data.metrics,
             "model_uri": r.data.tags.get("harness.model_uri"), "overrides": r.data.tags.get("harness.overrides", "")}
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


def log_search_model(searcher_dir: Path, register_as: str | None = None, score: float | None = None) -> str:
    """Log the searcher files as a pyfunc model (models-from-code); returns its model URI.

    Outside a sweep, `register_as` registers it as that model's champion at once, if its selection
    `score` is a finite number; in a sweep the SweepCallback registers the best child when it ends.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "text", required=False)]),
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
    if register_as and _sweep_dir() is None:
        if score is None or not math.isfinite(score):
            print(f"not registering {register_as}: its selection metric is {score}", file=sys.stderr)
        else:
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

    def score(c):
        m = c["metrics"]
        return m.get(f"{metric}_mean", m.get(metric))

    scored = [c for c in children if score(c) is not None and math.isfinite(score(c))]
    if not scored:
        raise HarnessError(f"No run of the sweep logged a finite {metric}.")

    def key(c):
        return (score(c), speed.get(c["params"].get("backbone.arch"), 0.0))
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
