"""Fashion image retrieval benchmark harness."""
from harness.config import CONFIG_DIR, ROOT

__all__ = ["CONFIG_DIR", "ROOT"]
