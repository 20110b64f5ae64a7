"""ImageNormalize against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from sepbn.models import IMAGENET_MEAN, IMAGENET_STD, ImageNormalize, to_model_input


def test_imagenet_values_by_hand() -> None:
    x = torch.zeros(1, 3, 1, 2)
    x[0, :, 0, 0] = torch.tensor([0.485, 0.456, 0.406])  # exactly the mean -> 0
    x[0, :, 0, 1] = 1.0
    y = ImageNormalize()(x)
    assert torch.allclose(y[0, :, 0, 0], torch.zeros(3), atol=1e-7)
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(y[0, :, 0, 1], expected, atol=1e-6)


def test_keeps_dtype_and_constants_stay_out_of_state_dict() -> None:
    layer = ImageNormalize()
    y = layer(torch.rand(2, 3, 4, 4, dtype=torch.float64))
    assert y.dtype == torch.float64
    assert layer.state_dict() == {}
    assert tuple(layer.mean.flatten().tolist()) == pytest.approx(IMAGENET_MEAN)
    assert tuple(layer.std.flatten().tolist()) == pytest.approx(IMAGENET_STD)


def test_rejects_wrong_input() -> None:
    layer = ImageNormalize()
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer(torch.rand(2, 1, 4, 4))
    with pytest.raises(TypeError, match="uint8"):
        layer(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="positive"):
        ImageNormalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="same non-zero length"):
        ImageNormalize((0.5, 0.5), (0.5,))


def test_to_model_input_scales_uint8_to_unit_floats() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    x = to_model_input(images, "cpu")
    assert x.dtype == torch.float32
    assert x.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert images.flatten().tolist() == [0, 51, 255]  # the batch itself is untouched
    with pytest.raises(TypeError, match="expected uint8 images"):
        to_model_input(x)
