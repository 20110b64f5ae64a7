"""benchmarks/bench_synthetic.py: the generator timed side by side with JPEG decoding."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_synthetic.py"


def _load_script() -> ModuleType:
    """The benchmark script as a module (it is not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("bench_synthetic", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_reports_side_by_side_rates() -> None:
    result = _load_script().benchmark_generator(num_faces=10)
    assert set(result) == {"images_per_s", "cpu_images_per_s", "jpeg_decodes_per_s", "ratio"}
    assert all(v > 0 for v in result.values())
