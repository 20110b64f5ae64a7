"""Input normalization, the first step of every model.

Models take float images in ``[0, 1]`` (:func:`to_model_input` makes them from uint8) and
standardize them with the ImageNet mean and standard deviation, which is what the
torchvision ImageNet weights expect (paper Sec. V-D keeps those weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_model_input(images: Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 images as the float ``[0, 1]`` input every model takes.

    The division happens after the move, so only uint8 crosses to the device.

    Args:
        images: ``(N, 3, S, S)`` uint8 (a batch of the data pipeline's crops).
        device: Where the result goes; ``None`` keeps the images' device.

    Shape:
        - images: ``(N, C, H, W)``; output: the same, float32.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.float().div_(255.0)


class ImageNormalize(nn.Module):
    """Per-channel ``(x - mean) / std``.

    The constants are non-persistent buffers: they follow ``.to(device)`` but are
    not part of checkpoints, so a checkpoint does not depend on them.

    Args:
        mean: Per-channel mean, one value per input channel.
        std: Per-channel standard deviation, all positive, same length as ``mean``.

    Shape:
        - Input: ``(N, C, H, W)`` float, values in ``[0, 1]``.
        - Output: ``(N, C, H, W)``, same dtype.
    """

    mean: Tensor  # (1, C, 1, 1) buffer
    std: Tensor  # (1, C, 1, 1) buffer

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(
                f"mean and std need the same non-zero length, got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.num_channels = len(mean)
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"expected images of shape (N, {self.num_channels}, H, W), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"expected float images in [0, 1], got dtype {x.dtype} "
                "(convert uint8 with sepbn.models.to_model_input)"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        mean = tuple(round(v, 4) for v in self.mean.flatten().tolist())
        std = tuple(round(v, 4) for v in self.std.flatten().tolist())
        return f"mean={mean}, std={std}"
