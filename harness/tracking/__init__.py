"""Tracking: where a run's params, metrics, folds, artifacts and served model are kept.

`base` is the interface (`Tracker`, `Job`) and the tracker that keeps nothing; the MLflow tracker is
split by concern: `mlflow_store` (the store, set up once and checked), `heartbeat` (which RUNNING
runs still have a process), `mlflow_tracker` (jobs), `sweeps` (a multirun's parent run, reading runs
back), `models` (the served model and the registry), `champion` (which run to serve). Only these
modules and `harness.serving` import mlflow.
"""
from harness.tracking.base import Job, NullTracker, Tracker, build_tracker

__all__ = ["Job", "NullTracker", "Tracker", "build_tracker"]
