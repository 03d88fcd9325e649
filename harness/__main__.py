"""python -m harness [overrides] | -m (sweep) | --help | --cfg job"""
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import validate
from harness.errors import HarnessError, Interrupted


def _interrupt(signum, frame):
    raise Interrupted(signum)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    try:
        validate(cfg)  # before importing torch and MLflow: a mistyped setting fails in a second, not in five
        from harness.run import run

        metrics = run(cfg)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return exc  # the sweep goes on; SweepCallback reports failures and exits non-zero at the end
        sys.exit(2)
    except Interrupted as exc:
        from harness.tracking import build_tracker

        build_tracker(cfg).interrupted()
        print(f"interrupted by {exc}: the run is marked KILLED in MLflow; stored features are kept",
              file=sys.stderr)
        sys.exit(128 + exc.signum)
    return metrics.get(cfg.selection.metric)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    main()
