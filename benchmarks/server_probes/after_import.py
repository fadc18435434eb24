"""Wrap functions of a module the moment it has been imported, in whatever process
imports it (the probes' ``sitecustomize`` runs this at start-up in every process of a
benchmarked server, spawned engine processes included)."""

import importlib.abc
import sys
from collections.abc import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds a hooked module as the other finders would (an editable install's own finder
    included), and runs its hook once the module has run."""

    def __init__(self, hooks: dict[str, Callable]) -> None:
        self.hooks = hooks

    def find_spec(self, name, path, target=None):
        if name not in self.hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_hook(module):
            exec_module(module)
            self.hooks[name](module)

        spec.loader.exec_module = exec_and_hook
        return spec


def after_import(hooks: dict[str, Callable]) -> None:
    """``hooks``: module name -> function called with the module once it has run."""
    sys.meta_path.insert(0, _AfterImport(hooks))
