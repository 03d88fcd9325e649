"""python -m harness [overrides] | -m (sweep) | --help | --cfg job"""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.errors import HarnessError
from harness.run import run

log = logging.getLogger("harness")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    try:
        metrics = run(cfg)
    except HarnessError as exc:
        log.error("%s", exc)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return exc  # the sweep goes on; SweepCallback reports failures and exits non-zero at the end
        sys.exit(2)
    return metrics.get(cfg.selection.metric)


if __name__ == "__main__":
    main()
