"""preprocess=detect: `preprocess=segment` with the mask from a pretrained torchvision detector.

`arch` is any torchvision detection model by its registered name (`torchvision.models.get_model`):
Mask R-CNN gives the instance's mask, Faster R-CNN or RetinaNet its box (filled). The instance kept is
the highest-scoring one of the `classes` named (COCO's: `person` for a garment being worn, `handbag`,
`tie`, `backpack`, `suitcase`, `umbrella`; null: any) at `score` or above; where none is, GrabCut's mask
stands in (`Segment.mask`). `weights`: `coco` (torchvision's, from its hub cache or downloaded once),
`random` (tests), or a local state-dict file. The network runs at `min_size` (torchvision resizes the
shorter side to it): a box needs far fewer pixels than the 800 it is trained at, and CPU time follows them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harness.errors import HarnessError
from harness.segment import Segment


class Detected(Segment):
    name = "detect"

    def __init__(self, arch: str = "maskrcnn_resnet50_fpn_v2", weights: str = "coco", classes=None,
                 score: float = 0.5, min_size: int = 320, **segment):
        super().__init__(**segment)
        import torchvision

        if arch not in torchvision.models.list_models(torchvision.models.detection):
            raise HarnessError(f"preprocess.arch={arch!r} is not a torchvision detection model; one of "
                               f"{', '.join(torchvision.models.list_models(torchvision.models.detection))}.")
        if not 0 < score <= 1:
            raise HarnessError(f"preprocess.score must be in (0, 1], got {score!r}.")
        self.arch, self.weights, self.score, self.min_size = arch, str(weights), float(score), int(min_size)
        categories = self._enum.meta["categories"]
        unknown = [c for c in (classes or []) if c not in categories]
        if unknown:
            raise HarnessError(f"preprocess.classes: {unknown[0]!r} is not a category of {arch}'s weights "
                               f"(e.g. person, handbag, tie, backpack, suitcase, umbrella).")
        self.classes = sorted(categories.index(c) for c in classes) if classes else None
        self._network = None  # built on first use, in the process that uses it

    @property
    def _enum(self):
        import torchvision

        return torchvision.models.get_model_weights(self.arch).DEFAULT

    def check(self) -> None:
        """The weights can be read (loaded here, once, so an offline machine hears it in one line now)."""
        self.network

    @property
    def network(self) -> torch.nn.Module:
        if self._network is None:
            import torchvision

            state = None if self.weights == "random" else self._state_dict()  # offline: said before building
            torch.manual_seed(0)  # random weights: the same network in every process
            model = torchvision.models.get_model(self.arch, weights=None, weights_backbone=None,
                                                 num_classes=len(self._enum.meta["categories"]),
                                                 min_size=self.min_size, max_size=self.min_size * 5 // 3)
            if state is not None:
                model.load_state_dict(state)
            self._network = model.eval()
        return self._network

    def _state_dict(self) -> dict:
        if self.weights != "coco":
            path = Path(self.weights).expanduser()
            if not path.is_file():
                raise HarnessError(f"preprocess.weights={self.weights}: no such file (coco, random, or a state-dict file).")
            return torch.load(path, map_location="cpu", weights_only=True)
        try:
            return self._enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # offline: URLError, ConnectionError, a hub that refuses
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise HarnessError(f"preprocess=detect: {self.arch}'s COCO weights could not be read ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); put {self._enum.url.rsplit('/', 1)[-1]} "
                               f"in {hub}, or set preprocess.weights=random or a local file.") from None

    @torch.inference_mode()
    def detections(self, img: Image.Image) -> dict:
        tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)
        return self.network([tensor])[0]

    def kept(self, found: dict) -> list[int]:
        """The detections of the classes named at `score` or above, likeliest first."""
        keep = found["scores"] >= self.score
        if self.classes is not None:
            keep &= torch.isin(found["labels"], torch.tensor(self.classes))
        rows = torch.nonzero(keep).flatten()
        return rows[found["scores"][rows].argsort(descending=True)].tolist()

    def items(self, img):
        """Every detection kept (torchvision has already merged overlapping ones), or GrabCut's regions."""
        found = self.detections(img)
        boxes = [tuple(int(round(float(v))) for v in found["boxes"][n]) for n in self.kept(found)]
        boxes = [(max(l, 0), max(t, 0), min(r, img.width), min(b, img.height)) for l, t, r, b in boxes]
        return [b for b in boxes if b[2] > b[0] and b[3] > b[1]] or super().items(img)

    def mask(self, img: Image.Image) -> np.ndarray:
        found = self.detections(img)
        kept = self.kept(found)
        if not kept:
            return super().mask(img)  # nothing detected: GrabCut's mask
        best = kept[0]
        if "masks" in found:
            mask = (found["masks"][best, 0] > 0.5).numpy()
            if mask.any():
                return mask
        left, top, right, bottom = (int(round(float(v))) for v in found["boxes"][best])
        mask = np.zeros((img.height, img.width), bool)
        mask[max(top, 0):bottom, max(left, 0):right] = True
        return mask
