"""An MLflow store (a SQLite database or a tracking server), set up once per tracker and checked first.

The database is created under a file lock (MLflow's schema creation races between processes); an
unreachable or unwritable store fails in one line before any work.
"""
from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from contextlib import nullcontext
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from harness.config import check_writable_dir
from harness.errors import HarnessError

PROBE_SECONDS = 3  # an HTTP tracking server must answer /health within this
# A tracking server that fails every call: MLflow's defaults (7 retries, backoff factor 2, 120 s timeout)
# retry for minutes before the one line (262 s seen). Four retries, backoff factor 1: about 15 s in all.
# The user's own settings of these variables win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


class MlflowStore:
    """`uri`: sqlite:///PATH or http(s)://server; `experiment`: its name; `artifact_root`: where a
    local database's artifacts go (a server keeps them where `mlflow server` says)."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.uri, self.experiment, self.artifact_root = str(uri), str(experiment), artifact_root
        self._experiment_id: str | None = None
        self._checked = False
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)

    def check(self) -> None:
        """The store can be written (sqlite) or answers (http), in one line if not."""
        if self._checked:
            return
        uri, path = self.uri, sqlite_path(self.uri)
        if path is not None:
            check_writable_dir(path.parent, f"tracking.uri={uri}")
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                raise HarnessError(f"tracking.uri={uri}: cannot write {path}.")
            check_writable_dir(self.artifact_root, f"tracking.artifact_root={self.artifact_root}")
        elif uri.startswith(("http://", "https://")):
            self._probe_server(uri.rstrip("/"))
        self._checked = True

    def _probe_server(self, base: str) -> None:
        uri = self.uri
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=PROBE_SECONDS) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HarnessError(f"tracking.uri={uri}: no MLflow server answers there within {PROBE_SECONDS} s "
                               f"({reason}). Start one (README: Scaling out) or use a sqlite:/// store.") from None
        # /health answers even when the server's store is down: one real API call must answer too
        # (a 404 for an experiment that does not exist yet is an answer).
        name = urllib.parse.quote(self.experiment)
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

    def connect(self) -> str:
        """Point MLflow at the store (created or upgraded under a file lock beside a SQLite database, so
        concurrent first runs cannot race in MLflow's migrations) and at the experiment, created with its
        artifacts beside the database. Returns the experiment id."""
        mlflow.set_tracking_uri(self.uri)
        if self._experiment_id is None:
            self.check()
            self._experiment_id = self._create()
        mlflow.set_experiment(experiment_id=self._experiment_id)
        return self._experiment_id

    def _create(self) -> str:
        path = sqlite_path(self.uri)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock") if path is not None else nullcontext():
                client = MlflowClient()
                exp = client.get_experiment_by_name(self.experiment)  # creates the schema if needed
                if exp is None:
                    # A tracking server keeps artifacts where `mlflow server --artifacts-destination` says,
                    # which every machine reaches through it; a local folder is only for a local database.
                    root = Path(self.artifact_root).resolve() / self.experiment
                    client.create_experiment(self.experiment,
                                             artifact_location=root.as_uri() if path is not None else None)
                    exp = client.get_experiment_by_name(self.experiment)
        except MlflowException as exc:
            message = str(exc.message).strip()
            first = message.splitlines()[0][:300] if message else type(exc).__name__
            raise HarnessError(f"tracking.uri={self.uri}: the MLflow store cannot be used ({first}).") from None
        except OSError as exc:
            raise HarnessError(f"tracking.uri={self.uri}: cannot create it ({exc.strerror}).") from None
        return exp.experiment_id

    @property
    def client(self) -> MlflowClient:
        self.connect()
        return MlflowClient()
