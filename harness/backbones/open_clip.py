"""OpenCLIP models (CLIP, SigLIP, FashionCLIP, FashionSigLIP, ...): the image embedding is the projected
`encode_image` output, in the same space as `encode_text`, so the catalog can be searched by words."""
from __future__ import annotations

import logging

import numpy as np
import torch

from harness.backbones.base import Backbone
from harness.backbones.hub import offline_message, use_hub
from harness.errors import HarnessError


class OpenCLIPBackbone(Backbone):
    """`arch`: an OpenCLIP model name (ViT-B-32, ...) with `pretrained` its weights tag
    (laion2b_s34b_b79k, ...), or `hf-hub:<org>/<repo>` (weights and configuration from that repo).
    `weights`: pretrained | random | a local file."""
    family = "open_clip"
    weight_tags = ("pretrained",)
    hub_weights = True
    can_embed_text = True

    def __init__(self, arch: str, pretrained: str | None = None, weights: str = "pretrained", **kwargs):
        self.arch, self.pretrained = arch, pretrained
        super().__init__(arch, weights=weights, **kwargs)
        if self.node != "penultimate":
            raise HarnessError(f"Unknown layer {self.layer!r} for OpenCLIP backbone {arch}: its image embedding is "
                               "layer=penultimate.")

    def _fill(self) -> str:
        return (f"python -c \"import open_clip; open_clip.create_model('{self.arch}'"
                + (f", pretrained='{self.pretrained}'" if self.pretrained else "") + ")\"")

    def _call(self, fn, *args, **kwargs):
        """An OpenCLIP call that may reach the hub (weights, or an hf-hub model's config and tokenizer)."""
        use_hub()
        logging.disable(logging.ERROR)  # OpenCLIP logs its own version of the failure (and "random weights") on the root logger
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            if "Model config for" in str(exc) and "not found" in str(exc):
                raise HarnessError(f"Unknown OpenCLIP model {self.arch!r} (open_clip.list_models() lists them).") from None
            raise HarnessError(offline_message(f"OpenCLIP model {self.arch}", exc, self._fill())) from None
        except (OSError, ValueError) as exc:
            raise HarnessError(offline_message(f"OpenCLIP model {self.arch}", exc, self._fill())) from None
        finally:
            logging.disable(logging.NOTSET)

    def data_config(self):
        import open_clip

        if self.arch.startswith("hf-hub:"):
            config = self._call(open_clip.get_model_config, self.arch) or {}
        else:
            config = open_clip.get_model_config(self.arch)
            if config is None:
                raise HarnessError(f"Unknown OpenCLIP model {self.arch!r} (open_clip.list_models() lists them).")
        pre = open_clip.get_pretrained_cfg(self.arch, self.pretrained or "") if self.pretrained else {}
        pre = {**config.get("preprocess_cfg", {}), **{k: v for k, v in pre.items() if k in ("mean", "std", "interpolation")}}
        size = config.get("vision_cfg", {}).get("image_size", 224)
        return {"input_size": size if isinstance(size, int) else size[0],
                "mean": tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                "std": tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)),
                "interpolation": pre.get("interpolation", "bicubic")}

    def skeleton(self):
        import open_clip

        return self._call(open_clip.create_model, self.arch, pretrained=None)

    def load_pretrained(self):
        import open_clip

        return self._call(open_clip.create_model, self.arch, pretrained=self.pretrained)

    def tap(self, model, train: bool = False):
        # encode_image(x) is visual(x) (unnormalised): the image tower alone is what extraction runs, cast
        # to bf16 and compiled; the text tower stays float32 beside it for the few text queries.
        self.clip = model.to(self.device)
        return model.visual

    def embed_text(self, texts: list[str]) -> np.ndarray:
        import open_clip

        self.embedder  # builds the network (and self.clip) on first use
        tokens = self._call(open_clip.get_tokenizer, self.arch)(list(texts))
        with torch.inference_mode():
            out = self.clip.encode_text(tokens.to(self.device))
        return out.float().cpu().numpy()

    @property
    def weights_id(self) -> str:
        return f"pretrained:{self.pretrained}" if self.weights == "pretrained" else super().weights_id
