"""Synthetic faces as annotated records: sample, render, annotate under one protocol."""

from __future__ import annotations

from sepbn.data.records import FaceRecord
from sepbn.data.synthetic.config import SyntheticFaceConfig
from sepbn.data.synthetic.face import SyntheticFace
from sepbn.data.synthetic.layouts import check_protocol
from sepbn.data.synthetic.render import render_face
from sepbn.data.synthetic.sampling import sample_face_params
from sepbn.errors import ConfigError


def generate_face(
    seed: int, index: int, config: SyntheticFaceConfig | None = None
) -> SyntheticFace:
    """Sample and render face ``index`` of ``seed``."""
    cfg = config if config is not None else SyntheticFaceConfig()
    return render_face(sample_face_params(seed, index, cfg), cfg.image_size)


def make_synthetic_records(
    num_faces: int,
    protocol: str = "300w",
    seed: int = 0,
    config: SyntheticFaceConfig | None = None,
    start_index: int = 0,
) -> list[FaceRecord]:
    """Generate annotated synthetic faces as in-memory records.

    Args:
        num_faces: How many faces.
        protocol: Landmark layout, one of :data:`SYNTHETIC_PROTOCOLS`.
        seed: Dataset seed (>= 0).
        config: Sampling settings; the defaults of :class:`SyntheticFaceConfig` if None.
        start_index: Index of the first face; face ``i`` is the same for a given seed
            and config whatever ``num_faces``, ``start_index`` or ``protocol``.

    Returns:
        Records with ``image`` ``(S, S, 3)`` uint8 RGB, ``image_path=None``, landmarks in
        0-based pixels, ``box`` the tight box of the 68 projected points (the same under
        every protocol; it is also the ``"aflw"`` NME normalizer), ``valid`` all True,
        ``occluded`` True under an occluder, ``domain`` 0 frontal / 1 left (nose to the
        image's left) / 2 right, WFLW-style ``attributes`` and ``source``
        ``"synthetic[seed=..., i=...]"``.

    Raises:
        ValueError: On an unknown protocol or a negative count, seed or index.
    """
    check_protocol(protocol)
    if num_faces < 0 or start_index < 0 or seed < 0:
        raise ConfigError(
            "num_faces, start_index and seed must be >= 0, got "
            f"num_faces={num_faces}, start_index={start_index}, seed={seed}"
        )
    cfg = config if config is not None else SyntheticFaceConfig()
    return [
        generate_face(seed, i, cfg).to_record(protocol, f"synthetic[seed={seed}, i={i}]")
        for i in range(start_index, start_index + num_faces)
    ]
