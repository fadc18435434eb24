"""The tests' fixtures: the family table (zspa_selfcheck/families.py) over the fixture
folders committed under tests/fixtures/models (``make fixtures`` writes them with
zspa-selfcheck's builders). Importing it has no side effects: benchmarks/ and scripts/
import it.

  FAMILIES / fixture_path(family)   the fixtures, by family name
  visual_tokens(family, w, h)       the model's own visual token count, from its formula
"""

from __future__ import annotations

from pathlib import Path

from zspa_selfcheck import families
from zspa_selfcheck.families import (  # noqa: F401  (the tests import them from here)
    FAMILIES,
    HYBRID_ENGINE,
    HYBRID_FAMILIES,
    QWEN_FAMILIES,
    Family,
    qwen_smart_resize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "tests" / "fixtures" / "models"


def fixture_path(family: str) -> Path:
    path = MODELS_DIR / family
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"missing fixture {path}; run: make fixtures")
    return path


def visual_tokens(family: str, width: int, height: int) -> int:
    """Placeholder tokens the fixture's model uses for one ``width`` x ``height`` image."""
    return families.visual_tokens(family, width, height, fixture_path(family))
