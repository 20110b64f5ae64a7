"""Write docs/reproduce.md: the template's prose, the paper's tables, the published runs.

    python docs/make_reproduce.py          # rewrite docs/reproduce.md
    python docs/make_reproduce.py --check  # exit 1 if docs/reproduce.md is out of date

The paper's numbers come from ``src/sepbn/analysis/paper_results.yaml``, the measured ones from
the run directories under ``docs/runs/`` (each with ``config.yaml`` and ``eval/summary.json``,
as ``sepbn train`` writes them). ``tests/analysis/test_report.py`` checks that the committed
page equals what this script writes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sepbn.analysis.report import find_runs, render_document

DOCS = Path(__file__).resolve().parent
TEMPLATE = DOCS / "reproduce.template.md"
OUTPUT = DOCS / "reproduce.md"
RUNS = DOCS / "runs"


def generate() -> str:
    """The text docs/reproduce.md should hold."""
    runs = find_runs([RUNS]) if RUNS.is_dir() and any(RUNS.iterdir()) else []
    return render_document(TEMPLATE.read_text(encoding="utf-8"), runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    text = generate()
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
