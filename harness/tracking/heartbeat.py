"""Which RUNNING runs still have a process behind them.

A run left RUNNING by a killed process (kill -9 leaves no chance to mark it) is recognised by its
process (this host: is that pid, started then, alive?) or by its heartbeat (another host's: a tag
refreshed every HEARTBEAT_SECONDS), so that reports and the champion never use an unfinished sweep.
"""
from __future__ import annotations

import threading
import time

from mlflow.tracking import MlflowClient

from harness import liveness

HEARTBEAT_SECONDS = 30   # a RUNNING run whose heartbeat is older than 4 of these has lost its process


def identity() -> dict[str, str]:
    """The tags that say which process runs a run, and since when it beat last."""
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


class Heartbeat:
    """Refreshes `harness.heartbeat` on the runs it holds, so other machines can tell them alive. One
    per tracker; its thread starts with the first run and stops when it holds none."""

    def __init__(self, seconds: float = HEARTBEAT_SECONDS):
        self.seconds = seconds
        self.runs: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, run_id: str) -> None:
        with self._lock:
            self.runs.add(run_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="mlflow-heartbeat", daemon=True)
                self._thread.start()

    def discard(self, run_id: str) -> None:
        with self._lock:
            self.runs.discard(run_id)

    def _beat(self) -> None:
        while True:
            time.sleep(self.seconds)
            with self._lock:
                runs = list(self.runs)
                if not runs:
                    self._thread = None
                    return
            for run_id in runs:
                try:
                    MlflowClient().set_tag(run_id, "harness.heartbeat", str(int(time.time())))
                except Exception:  # a missed beat is no reason to disturb the run
                    pass
