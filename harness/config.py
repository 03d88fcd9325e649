"""Config helpers shared by the CLI, the tests and the demo."""
from __future__ import annotations

from pathlib import Path

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "conf"

# ${repo_root:} keeps MLflow, the feature store and the cache in the checkout, whatever the cwd.
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(ROOT))


def compose_config(*overrides: str):
    """The project's config with overrides, outside `python -m harness` (report, register, demo, bench)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def instantiate(spec, **kwargs):
    """hydra.utils.instantiate, but a HarnessError raised by the target comes out as itself."""
    try:
        return hydra.utils.instantiate(spec, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, HarnessError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
