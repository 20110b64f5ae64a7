"""Synthetic faces with exactly known landmarks, for demos and tests without downloads.

A 3-D face template written in code (:mod:`~sepbn.data.synthetic.template`) is deformed
by identity and expression modes (:mod:`~sepbn.data.synthetic.modes`), turned by a
random head pose and projected (:mod:`~sepbn.data.synthetic.camera`), and drawn with
OpenCV from the same projected points (:mod:`~sepbn.data.synthetic.render`), so the
landmarks are visible in the pixels. Poses form unbalanced sub-domains, most faces
near-frontal and fewer left and right profiles, the situation SepBN targets (paper
Sec. III-A, Fig. 3). The same face, pixel for pixel, can be annotated under every
protocol of the project (``"300w"``, ``"wflw"``, ``"cofw"``, ``"aflw"``, ``"wider5"``,
and ``"cofw_pupil"``), which is what cross-protocol training needs; each layout is a
fixed linear map of the projected template points, derived from real annotations
(see :data:`sepbn.data.synthetic.layouts.PROTOCOL_WEIGHTS`).

Face ``i`` of a seed is drawn from its own generator seeded with ``(seed, i)``
(:mod:`~sepbn.data.synthetic.sampling`), so it is the same whatever protocol,
``num_faces`` or ``start_index`` is asked for: index ranges give disjoint train and test
sets, and two protocols can share faces.

The modules, in the order the data flows: ``template`` → ``modes`` and ``layouts`` →
``config`` → ``params`` → ``sampling`` → ``camera`` → ``face`` → ``render`` →
``generator`` (records) → ``preview`` (a PNG grid). ``benchmarks/bench_synthetic.py``
times the generator.
"""

from sepbn.data.synthetic.config import DOMAIN_NAMES, SyntheticFaceConfig
from sepbn.data.synthetic.face import SyntheticFace
from sepbn.data.synthetic.generator import generate_face, make_synthetic_records
from sepbn.data.synthetic.layouts import PROTOCOL_WEIGHTS, SYNTHETIC_PROTOCOLS
from sepbn.data.synthetic.params import Clutter, FaceParams, Occluder
from sepbn.data.synthetic.preview import save_synthetic_preview
from sepbn.data.synthetic.render import render_face
from sepbn.data.synthetic.sampling import sample_face_params

__all__ = [
    "DOMAIN_NAMES",
    "PROTOCOL_WEIGHTS",
    "SYNTHETIC_PROTOCOLS",
    "Clutter",
    "FaceParams",
    "Occluder",
    "SyntheticFace",
    "SyntheticFaceConfig",
    "generate_face",
    "make_synthetic_records",
    "render_face",
    "sample_face_params",
    "save_synthetic_preview",
]
