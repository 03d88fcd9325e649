"""The served catalog index: versioned (items, vectors), updated in place as the catalog changes."""
from harness.index.store import IndexStore, Snapshot

__all__ = ["IndexStore", "Snapshot"]
