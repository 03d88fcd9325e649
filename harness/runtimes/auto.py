"""runtime=auto: OpenVINO on a CPU where it is installed, else torch eager."""
from __future__ import annotations

from harness.runtimes.base import Runtime
from harness.runtimes.openvino import OpenVINORuntime, openvino_installed
from harness.runtimes.torch_eager import TorchRuntime


class AutoRuntime(Runtime):
    """Resolves, for the backbone's device, to OpenVINO (`cache_dir`) or torch; never runs itself."""
    name = "auto"

    def __init__(self, cache_dir: str | None = None):
        super().__init__()
        self.cache_dir = cache_dir

    def settings(self):
        return ("cache_dir",)

    def resolve(self, device):
        if device.type == "cpu" and openvino_installed():
            return OpenVINORuntime(self.cache_dir)
        return TorchRuntime()
