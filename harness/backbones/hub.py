"""Model hubs (Hugging Face, torch hub) for the timm and OpenCLIP families: fail fast and clearly offline."""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

PROBE_SECONDS = 3


def hub_cache() -> str:
    return str(Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub")


@functools.lru_cache(maxsize=None)
def use_hub() -> bool:
    """Whether the Hugging Face hub answers. If not, huggingface_hub is put in offline mode for this
    process: files in the cache are still used, a missing one fails at once instead of after minutes
    of retries."""
    import huggingface_hub.constants as hf

    if hf.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(hf.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=PROBE_SECONDS).close()
        return True
    except OSError:
        hf.HF_HUB_OFFLINE = True
        return False


def offline_message(model: str, exc: Exception, fill: str) -> str:
    where = "the hub cannot be reached" if not use_hub() else f"loading failed ({type(exc).__name__}: {str(exc)[:120]})"
    return (f"Cannot load {model}: its files are not in the Hugging Face cache ({hub_cache()}, set by HF_HOME; "
            f"some timm weights live in $TORCH_HOME/hub/checkpoints) and {where}. Where there is a network, "
            f"`{fill}` fills the cache; or pass a local weights file with backbone.weights=PATH; or use "
            f"backbone.weights=random for speed tests.")
