"""Fashion image retrieval benchmark harness."""
import logging

from harness.config import CONFIG_DIR, ROOT

# FAISS logs which of its builds it loads at INFO, on every run; a run's log is for the run.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

__all__ = ["CONFIG_DIR", "ROOT"]
