"""runtime=torch: PyTorch eager, channels-last, bf16 autocast where the CPU or GPU has it."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.runtimes.base import Embedder, Runtime


class TorchRuntime(Runtime):
    name = "torch"
    fingerprint: dict = {}  # none: eager features were stored before there were runtimes

    def prepare(self, embedder: Embedder, batch_size, precision, device, key, calibration=None):
        # The whole embedding module runs (normalisation, pooling, a flip or a fused backbone's members
        # inside it), channels-last: elementwise ops keep the input's memory format.
        net = embedder.to(device, memory_format=torch.channels_last).eval()
        if precision == "bf16":
            # Autocast casts every conv/linear weight to bf16 again for each batch (its cast cache lasts
            # one autocast region). Casting them once gives the same bf16 values, so the same features,
            # without the copy. Other layers stay as autocast runs them.
            # nn.MultiheadAttention (OpenCLIP) keeps its input projection as a bare parameter: cast it whole,
            # or its fp32 in-projection meets a bf16 out-projection and every call pays for copies.
            for module in net.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.MultiheadAttention)):
                    module.to(torch.bfloat16)
        self.network, self.device, self.precision = net, device, precision
        self.ready = True
        return self

    def run(self, images, n):
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.network(x)
        return out[:n].float().cpu().numpy().astype(np.float32, copy=False)
