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
        cfg = compose("config", overrides=list(overrides))
    validate(cfg)
    return cfg


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


def check_writable_dir(directory, what: str) -> None:
    """`directory` exists and is writable, or could be created: creates nothing, so a failed check
    leaves nothing behind."""
    import tempfile

    directory = Path(directory).expanduser().absolute()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise HarnessError(f"{what}: cannot create {directory} ({existing} is not a folder).")
    try:  # permissions alone can mislead (root, read-only mounts, /proc): write and remove a file
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise HarnessError(f"{what}: cannot write to {existing} ({exc.strerror}).") from None


def _whole(value, name: str, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        also = ", or null" if allow_none else ""
        raise HarnessError(f"{name} must be a whole number >= {minimum}{also}; got {value!r}.")


def validate(cfg) -> None:
    """The settings that would otherwise run and log nonsense (NaN scores, 'all' for a limit of 0):
    one clear line each, before anything is read, extracted or logged."""
    _whole(cfg.k, "k", 1)
    _whole(cfg.dataset.get("limit"), "dataset.limit", 1, allow_none=True)
    _whole(cfg.extract.batch_size, "extract.batch_size", 1)
    _whole(cfg.extract.num_workers, "extract.num_workers", 0)
    _whole(cfg.extract.calibration.size, "extract.calibration.size", 1)
    _whole(cfg.extract.calibration.seed, "extract.calibration.seed", 0)
    for limit in ("max_k", "max_rows", "rerank_candidates", "category_votes"):
        _whole(cfg.serving[limit], f"serving.{limit}", 1)
    from harness.serving.products import COMBINES, DISTANCES

    products = cfg.serving.products
    if products.distance not in DISTANCES or products.query not in COMBINES:
        raise HarnessError(f"serving.products.distance must be {' or '.join(DISTANCES)} and serving.products.query "
                           f"{' or '.join(COMBINES)}; got {products.distance!r}, {products.query!r}.")
    _whole(cfg.dedup.k, "dedup.k", 1)
    t = cfg.dedup.threshold
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0):
        raise HarnessError(f"dedup.threshold must be a distance >= 0, or null; got {t!r}.")
    if cfg.index.backend not in ("faiss", "milvus"):
        raise HarnessError(f"index.backend must be faiss or milvus; got {cfg.index.backend!r}.")
    if cfg.store.dtype not in ("float32", "float16"):
        raise HarnessError(f"store.dtype must be float32 or float16; got {cfg.store.dtype!r}.")
