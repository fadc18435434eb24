"""tests/families.py: one row per family, tied to the plugin's registry, the fixture
script and each family's own user-turn pattern; importable by benchmarks and scripts
without side effects."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.families import FAMILIES
from zspa_vllm import MODEL_OVERRIDES

REPO = Path(__file__).resolve().parents[2]


def test_every_family_the_plugin_overrides_has_one_row_and_a_fixture_builder():
    assert sorted(f.architecture for f in FAMILIES.values()) == sorted(MODEL_OVERRIDES)
    from zspa_selfcheck.fixtures import BUILDERS

    assert set(BUILDERS) == set(FAMILIES)


def _query_pattern(architecture: str):
    module = importlib.import_module(MODEL_OVERRIDES[architecture].partition(":")[0])
    patterns = {
        getattr(cls, "QUERY_PATTERN", None)
        for cls in vars(module).values()
        if isinstance(cls, type) and getattr(cls, "QUERY_PATTERN", None) is not None
    }
    assert len(patterns) == 1, (architecture, patterns)
    return patterns.pop()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_fixture_prompt_is_a_user_turn_the_family_finds(family):
    """The prompt the tests send and the user-turn pattern the plugin reads its query
    from describe the same chat template."""
    question = "Which shape is left of the red one?"
    prompt = FAMILIES[family].prompt_format.format(q=question)
    found = _query_pattern(FAMILIES[family].architecture).search(prompt)
    assert found is not None and question in found.group(1), (family, prompt)
    assert FAMILIES[family].image_token in prompt or FAMILIES[family].wrapped


def test_importing_the_table_changes_nothing():
    code = (
        "import os, sys; before = dict(os.environ); import tests.families, tests.fixtures.images, zspa_selfcheck.fixtures; "
        "sys.exit(('vllm' in sys.modules) * 2 + (dict(os.environ) != before))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks").glob("*.py")) + sorted((REPO / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_and_scripts_import_only_side_effect_free_test_support(path):
    allowed = {"tests.families", "tests.fixtures.images"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tests":
            assert node.module in allowed, f"{path.name} imports {node.module}"
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "tests" and a.name not in allowed for a in node.names), path.name


def test_the_builders_write_the_committed_fixtures(tmp_path):
    """zspa-selfcheck builds its models with the builders that wrote tests/fixtures/models:
    rebuilt here, every family's weights and configs are byte-identical to the committed ones."""
    from tests.families import MODELS_DIR
    from zspa_selfcheck.fixtures import build

    for family in FAMILIES:
        build(family, tmp_path / family)
        for name in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json"):
            built, committed = (tmp_path / family / name).read_bytes(), (MODELS_DIR / family / name).read_bytes()
            assert built == committed, f"{family}/{name} differs from the committed fixture: run `make fixtures`"


def test_the_selfcheck_package_needs_nothing_outside_the_installed_distribution():
    """zspa_selfcheck is installed without the repository: it imports no tests/ or scripts/."""
    for path in sorted((REPO / "zspa_selfcheck").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.split(".")[0] in ("tests", "scripts", "benchmarks") for n in names), f"{path.name} imports {names}"
