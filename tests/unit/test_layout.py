"""The package's folders are vLLM's processes: each imports only the pure core, the
shared top-level modules and itself, so what runs where is what the tree says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zspa_vllm"
SHARED = {"zspa_vllm", "zspa_vllm.envs", "zspa_vllm.vllm_versions", "zspa_vllm.vllm_touch_points"}
MAY_IMPORT = {
    "core": {"core"},
    "frontend": {"core", "frontend"},  # the API-server process
    "engine": {"core", "engine"},  # the engine-core process
    "worker": {"core", "worker"},  # the worker processes
    "models": {"core", "frontend", "worker", "models"},  # a family: its processor and its model
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zspa_vllm"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("zspa_vllm")}
    return found


@pytest.mark.parametrize("folder", sorted(MAY_IMPORT))
def test_each_process_folder_imports_only_the_core_shared_modules_and_itself(folder):
    for path in sorted((PACKAGE / folder).glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[1] if name.count(".") else None
            if name in SHARED or top in ("envs", "vllm_versions", "vllm_touch_points", "__version__"):
                continue
            assert top in MAY_IMPORT[folder], f"{path.relative_to(PACKAGE.parent)} imports {name}"


def test_the_core_imports_no_vllm():
    modules = [f"zspa_vllm.core.{p.stem}" for p in sorted((PACKAGE / "core").glob("*.py")) if p.stem != "__init__"]
    code = f"import sys; import {', '.join(modules)}; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
