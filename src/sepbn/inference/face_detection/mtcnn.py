"""MTCNN (Zhang et al., 2016) on torch, with the weights that ship in ``facenet-pytorch``.

Three small networks in a cascade: P-Net scans an image pyramid for 12x12 face windows,
R-Net re-scores and refines them at 24x24, O-Net at 48x48. The networks are defined
here; only their state dicts come from the ``facenet-pytorch`` wheel
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``), read from its folder without importing
the package, whose ``__init__`` needs packages sepbn does not (``requests``).

``pip install 'sepbn[mtcnn]'`` brings facenet-pytorch 2.5.x, whose requirements are
unpinned; 2.6.0 pins torch<2.3 and numpy<2 but holds the same three files, so
``pip install --no-deps facenet-pytorch`` works as well.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms, roi_align

from sepbn.inference.face_detection.base import (
    FaceDetector,
    FaceDetectorError,
    downscale_for_detection,
)

__all__ = ["MTCNNFaceDetector", "ONet", "PNet", "RNet", "mtcnn_weights_dir"]

INSTALL_HINT = "pip install 'sepbn[mtcnn]'  (or: pip install --no-deps facenet-pytorch)"


def mtcnn_weights_dir() -> Path:
    """The ``facenet_pytorch/data`` folder holding ``pnet.pt``, ``rnet.pt``, ``onet.pt``.

    Raises:
        FaceDetectorError: facenet-pytorch is not installed or lacks the files.
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FaceDetectorError(f"the 'mtcnn' face detector needs facenet-pytorch: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [n for n in ("pnet.pt", "rnet.pt", "onet.pt") if not (folder / n).is_file()]
    if missing:
        raise FaceDetectorError(f"{folder} lacks {missing}; reinstall facenet-pytorch")
    return folder


# The three networks, stage by stage: (out_channels, kernel_size, max-pool kernel and stride
# after the stage or None). Every convolution is followed by a PReLU.
PNET_STAGES = ((10, 3, (2, 2)), (16, 3, None), (32, 3, None))
RNET_STAGES = ((28, 3, (3, 2)), (48, 3, (3, 2)), (64, 2, None))
ONET_STAGES = ((32, 3, (3, 2)), (64, 3, (3, 2)), (64, 3, (2, 2)), (128, 2, None))


class _ConvStages(nn.Module):
    """``conv{i}``, ``prelu{i}``, ``pool{i}`` for each stage (the names of the weight files)."""

    def __init__(self, stages: tuple[tuple[int, int, tuple[int, int] | None], ...]) -> None:
        super().__init__()
        in_channels = 3
        for i, (out_channels, kernel_size, pool) in enumerate(stages, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(in_channels, out_channels, kernel_size))
            self.add_module(f"prelu{i}", nn.PReLU(out_channels))
            if pool is not None:
                self.add_module(f"pool{i}", nn.MaxPool2d(*pool, ceil_mode=True))
            in_channels = out_channels
        self.num_stages = len(stages)

    def stages(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"prelu{i}")(getattr(self, f"conv{i}")(x))
            if hasattr(self, f"pool{i}"):
                x = getattr(self, f"pool{i}")(x)
        return x


class PNet(_ConvStages):
    """Proposal network: fully convolutional, a face score and box offsets per 12x12 window.

    Shape:
        - input: ``(N, 3, H, W)`` normalized RGB
        - output: probabilities ``(N, 2, H', W')`` and offsets ``(N, 4, H', W')``, one per
          12x12 window at stride 2
    """

    def __init__(self) -> None:
        super().__init__(PNET_STAGES)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stages(x)
        return F.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


class _CropNet(_ConvStages):
    """R-Net and O-Net: conv stages ending at 3x3, one dense layer, then the output heads.

    Shape:
        - input: ``(N, 3, S, S)`` crops
        - output: probabilities ``(N, 2)``, then the other heads ``(N, k)``
    """

    def __init__(self, stages: tuple, hidden: int, heads: tuple[int, ...]) -> None:
        super().__init__(stages)
        n = self.num_stages + 1
        self.add_module(f"dense{n}", nn.Linear(stages[-1][0] * 3 * 3, hidden))
        self.add_module(f"prelu{n}", nn.PReLU(hidden))
        for k, size in enumerate(heads, start=1):
            self.add_module(f"dense{n + 1}_{k}", nn.Linear(hidden, size))
        self.num_heads = len(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stages(x)  # (N, C, 3, 3)
        # The weights were converted from Caffe, whose dense layers read the map in
        # (W, H, C) order.
        x = x.permute(0, 3, 2, 1).flatten(1)
        n = self.num_stages + 1
        x = getattr(self, f"prelu{n}")(getattr(self, f"dense{n}")(x))
        out = [getattr(self, f"dense{n + 1}_{k}")(x) for k in range(1, self.num_heads + 1)]
        return (F.softmax(out[0], dim=1), *out[1:])


class RNet(_CropNet):
    """Refinement network on 24x24 crops: face probabilities ``(N, 2)``, offsets ``(N, 4)``."""

    def __init__(self) -> None:
        super().__init__(RNET_STAGES, hidden=128, heads=(2, 4))


class ONet(_CropNet):
    """Output network on 48x48 crops: probabilities, offsets and five points ``(N, 10)``.

    The five points are not used here.
    """

    def __init__(self) -> None:
        super().__init__(ONET_STAGES, hidden=256, heads=(2, 4, 10))


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes ``(K, 4)`` made square (side max(w, h)) around their centres."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply the networks' box offsets, which are fractions of the box's width and height."""
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * wh


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """NMS by intersection over the smaller box (drops boxes nested in a better one)."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    area = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    lo = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=2)  # (K, K)
    overlap = inter / torch.minimum(area[:, None], area[None, :])
    keep = torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if keep[i]:
            later = overlap[i] > threshold
            later[: i + 1] = False
            keep &= ~later
    return order[keep]


class MTCNNFaceDetector(FaceDetector):
    """MTCNN face boxes, on the CPU or a GPU.

    The photo is first shrunk to ``max_side`` (see
    :func:`~sepbn.inference.face_detection.base.downscale_for_detection`): P-Net's pyramid
    over a full-size photo is most of the cost, and the 300-W and WFLW faces are found as
    well at 640 pixels. Measured on every 6th WFLW test face (71) at 640 pixels: 59 found
    with ``min_face=40``, 63 with 20 at twice the detection time; on every 8th 300-W common
    face (64) both found 63 with ``min_score=0.9``, which dropped a true face scored 0.81.

    Args:
        min_face: Smallest face side searched for, in pixels of the shrunk image.
        thresholds: Face probability needed by P-Net, R-Net, O-Net.
        factor: Image pyramid step.
        max_side: Detect on a copy whose longest side is at most this (0: full size).
        min_score: Drop detections below this O-Net probability (at most ``thresholds[2]``
            has no effect).
        device: Where the three networks run.
    """

    name = "mtcnn"

    def __init__(
        self,
        min_face: int = 40,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_side: int = 640,
        min_score: float = 0.7,
        device: str | torch.device = "cpu",
    ) -> None:
        folder = mtcnn_weights_dir()
        if min_face < 12:
            raise ValueError(f"min_face must be >= 12 pixels (P-Net's window), got {min_face}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, file in ((self.pnet, "pnet.pt"), (self.rnet, "rnet.pt"), (self.onet, "onet.pt")):
            state = torch.load(folder / file, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
            net.to(self.device).eval()
        self.min_face = int(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.max_side = int(max_side)
        self.min_score = float(min_score)

    def _scales(self, height: int, width: int) -> list[float]:
        scale = 12.0 / self.min_face
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _proposals(self, image: torch.Tensor) -> torch.Tensor:
        """P-Net over the pyramid: ``(K, 5)`` boxes and scores in image pixels."""
        height, width = image.shape[-2:]
        found = []
        for scale in self._scales(height, width):
            size = (math.ceil(height * scale), math.ceil(width * scale))
            prob, offsets = self.pnet(F.interpolate(image, size=size, mode="area"))
            ys, xs = torch.nonzero(prob[0, 1] > self.thresholds[0], as_tuple=True)
            if len(ys) == 0:
                continue
            # Each output cell is a 12x12 window at stride 2 of the scaled image.
            corner = torch.stack([xs, ys], dim=1).float() * 2
            boxes = torch.cat([corner, corner + 12], dim=1) / scale
            score = prob[0, 1, ys, xs]
            boxes = _regress(boxes, offsets[0, :, ys, xs].T)
            keep = nms(boxes, score, 0.5)
            found.append(torch.cat([boxes[keep], score[keep, None]], dim=1))
        if not found:
            return image.new_zeros((0, 5))
        boxes = torch.cat(found)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return boxes[keep]

    def _refine(self, image: torch.Tensor, boxes: torch.Tensor, stage: int) -> torch.Tensor:
        """R-Net (stage 1) or O-Net (stage 2) on square crops of ``boxes``: ``(K, 5)``."""
        boxes = _square(boxes[:, :4])
        size = 24 if stage == 1 else 48
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)
        # roi_align reads zeros outside the image, like MTCNN's zero padding.
        crops = roi_align(image, rois, size, sampling_ratio=2, aligned=True)
        prob, offsets = (self.rnet if stage == 1 else self.onet)(crops)[:2]
        score = prob[:, 1]
        keep = score > self.thresholds[stage]
        boxes = _regress(boxes[keep], offsets[keep])
        score = score[keep]
        order = nms(boxes, score, 0.7) if stage == 1 else _nms_min(boxes, score, 0.7)
        return torch.cat([boxes[order], score[order, None]], dim=1)

    @torch.inference_mode()
    def detect_raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """O-Net's boxes (squares) and face probabilities, highest first.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB.
        """
        small, factor = downscale_for_detection(rgb, self.max_side)
        image = torch.from_numpy(np.ascontiguousarray(small)).to(self.device)
        image = (image.permute(2, 0, 1)[None].float() - 127.5) / 128.0  # (1, 3, h, w)
        boxes = self._proposals(image)
        for stage in (1, 2):
            if len(boxes) == 0:
                break
            boxes = self._refine(image, boxes, stage)
        found = boxes.cpu().double().numpy()
        found = found[found[:, 4] >= self.min_score] if len(found) else np.zeros((0, 5))
        found = found[np.argsort(-found[:, 4], kind="stable")]
        return found[:, :4] / factor, found[:, 4]
