"""A PNG grid of generated faces with their landmarks, to look at what the generator makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sepbn.data.synthetic.config import DOMAIN_NAMES, SyntheticFaceConfig
from sepbn.data.synthetic.generator import make_synthetic_records
from sepbn.data.synthetic.layouts import check_protocol
from sepbn.data.visualize import GREEN, RED, add_title, make_grid, write_png


def save_synthetic_preview(
    path: str | Path,
    num: int = 16,
    seed: int = 0,
    protocol: str = "300w",
    config: SyntheticFaceConfig | None = None,
) -> Path:
    """Save a PNG grid of generated faces with their landmarks drawn on top.

    Landmark colours: green, or red where an occluder covers the point. Each tile is
    captioned with its index and pose sub-domain.

    Returns:
        The written path.
    """
    check_protocol(protocol)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    cfg = config if config is not None else SyntheticFaceConfig()
    images, marks, labels = [], [], []
    for k, r in enumerate(make_synthetic_records(num, protocol, seed, cfg)):
        # Generated records always hold pixels, occlusion flags and a pose domain.
        assert r.image is not None and r.occluded is not None and r.domain is not None
        images.append(r.image)
        marks.append([(r.landmarks[~r.occluded], GREEN), (r.landmarks[r.occluded], RED)])
        labels.append(f"{k} {DOMAIN_NAMES[r.domain]}")
    ncols = int(np.ceil(np.sqrt(num)))
    grid = make_grid(images, marks, ncols, labels, pad=0, radius=1.0)
    title = f"synthetic faces, seed={seed}, protocol={protocol}, {cfg.image_size}px"
    return write_png(path, add_title(grid, title))
