"""Paths shared by the benchmark scripts (run them as python benchmarks/<name>.py)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALTECH = ROOT.parent / "shared" / "data" / "caltech101" / "101_ObjectCategories"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
