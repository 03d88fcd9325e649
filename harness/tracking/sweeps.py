"""A multirun as MLflow keeps it (one parent run, a child run per job), and reading runs back for the
sweep report and champion selection."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from harness.errors import HarnessError
from harness.tracking.base import build_tracker
from harness.tracking.champion import select_champion
from harness.tracking.heartbeat import identity, run_state
from harness.tracking.mlflow_tracker import MlflowTracker
from harness.tracking.models import register_champion

log = logging.getLogger(__name__)


def expected_jobs(config: DictConfig) -> int:
    """How many jobs the sweep's overrides make (Hydra's basic sweeper: the cartesian product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def mlflow_tracker(config) -> MlflowTracker | None:
    tracker = build_tracker(config)
    return tracker if isinstance(tracker, MlflowTracker) else None


class SweepCallback(Callback):
    """Hydra callback: a multirun is one parent MLflow run with a child run per job. The parent ends
    FINISHED only when every job succeeded; only then is the champion registered."""

    def __init__(self):
        self.failures: list[str] = []
        self.run_id: str | None = None
        self.tracker: MlflowTracker | None = None

    def __getstate__(self):
        """A launcher that runs jobs elsewhere (Ray, joblib) ships the callbacks with them: the sweep's
        bookkeeping goes, its tracker (a heartbeat thread) stays with the process that opened the sweep."""
        return {**self.__dict__, "tracker": None}

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        if job_return.status != JobStatus.COMPLETED or isinstance(job_return._return_value, HarnessError):
            self.failures.append(" ".join(config.hydra.overrides.task))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.tracker = mlflow_tracker(config)
        if self.tracker is None:
            return
        exp_id = self.tracker.store.connect()
        overrides = " ".join(config.hydra.overrides.task)
        run = self.tracker.store.client.create_run(exp_id, run_name=f"sweep {overrides}".strip(), tags={
            "harness.sweep": "true", "harness.overrides": overrides, "harness.sweep_dir": str(config.hydra.sweep.dir),
            **identity()})
        self.run_id = run.info.run_id
        self.tracker.heartbeat.add(self.run_id)
        log.info("sweep run %s", run.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.run_id:
            client = self.tracker.store.client
            # A launcher that runs jobs elsewhere (Ray, joblib) calls on_job_end there, not here: count
            # the jobs that finished a run against the jobs the sweep made.
            finished = len(sweep_children(self.tracker, self.run_id))
            missing = expected_jobs(config) - finished
            if missing > len(self.failures):
                self.failures += [f"{missing - len(self.failures)} job(s) without a finished run"]
            client.set_tag(self.run_id, "harness.jobs_failed", str(len(self.failures)))
            client.set_terminated(self.run_id, status="FAILED" if self.failures else "FINISHED")
            self.tracker.heartbeat.discard(self.run_id)
            if config.serving.log_model and config.serving.register:
                self._register(config)
        if self.failures:
            print(f"error: {len(self.failures)} job(s) failed: {'; '.join(self.failures)}", file=sys.stderr)
            sys.exit(2)

    def _register(self, config: DictConfig) -> None:
        if self.failures:
            print(f"not registering a champion: {len(self.failures)} job(s) of the sweep failed "
                  f"(python -m harness.register --sweep {self.run_id} --allow-incomplete does it anyway)",
                  file=sys.stderr)
            return
        children = [c for c in sweep_children(self.tracker, self.run_id) if c["model_uri"]]
        if children:
            best = select_champion(children, config.selection.metric)
            register_champion(best["run_id"], config.serving.model_name)


def pick_sweep(tracker: MlflowTracker, sweep_id: str | None = None, allow_incomplete: bool = False) -> str:
    """The sweep to report on or pick the champion from: `sweep_id`, or the newest whose every job
    finished. A sweep that did not finish (still running, killed, lost its process, had failed jobs)
    is used only with `allow_incomplete`, and every one passed over is named."""
    exp_id = tracker.store.connect()
    client = tracker.store.client
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
    raise HarnessError(f"No finished sweep in experiment '{tracker.experiment}' at {tracker.uri}; run "
                       "`python -m harness -m ...` first, or pass --sweep RUN_ID --allow-incomplete.")


def _describe(run, state: str) -> str:
    failed = run.data.tags.get("harness.jobs_failed")
    return {"running": "still running", "lost": "left RUNNING by a process that is gone (killed?)",
            "killed": "interrupted", "failed": f"{failed or 'some'} job(s) failed"}.get(state, state)


def sweep_children(tracker: MlflowTracker, sweep_id: str) -> list[dict]:
    """Finished child runs of a sweep: run id, params, metrics, logged model."""
    exp_id = tracker.store.connect()
    runs = tracker.store.client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{sweep_id}'",
                                            order_by=["attributes.start_time ASC"])
    return [{"run_id": r.info.run_id, "params": r.data.params, "metrics": r.data.metrics,
             "model_uri": r.data.tags.get("harness.model_uri"), "overrides": r.data.tags.get("harness.overrides", "")}
            for r in runs if r.info.status == "FINISHED"]


def read_csv_artifact(tracker: MlflowTracker, run_id: str, name: str, dst: Path):
    import pandas as pd

    try:
        return pd.read_csv(tracker.store.client.download_artifacts(run_id, name, str(dst)))
    except Exception:  # older runs may lack the artifact
        return None


def log_artifacts_to(tracker: MlflowTracker, run_id: str, paths: list[Path], subdir: str | None = None) -> None:
    client = tracker.store.client
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path=subdir)


def result_cards(tracker: MlflowTracker, dst: Path) -> list[dict]:
    """Every finished run's result card (card.json), oldest first, with its run id and start time."""
    import json

    exp_id = tracker.store.connect()
    cards = []
    for run in tracker.store.client.search_runs([exp_id], "attributes.status = 'FINISHED'",
                                                 order_by=["attributes.start_time ASC"]):
        try:
            path = tracker.store.client.download_artifacts(run.info.run_id, "card.json", str(dst / run.info.run_id))
        except Exception:  # runs logged before cards, sweep parents, dedup runs: no card
            continue
        cards.append({**json.loads(Path(path).read_text()), "run_id": run.info.run_id, "start_time": run.info.start_time})
    return cards
