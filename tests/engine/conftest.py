"""Fixtures for engine tests; the helpers live in tests/engine/harness.py.

tests/conftest.py sets VLLM_ENABLE_V1_MULTIPROCESSING=0, VLLM_CPU_KVCACHE_SPACE=1
etc. before anything imports vLLM.
"""

from __future__ import annotations

import os
import random

import pytest

from tests.engine import harness
from tests.engine.harness import STOCK_VLLM_PLUGINS, free_engine, start_engine


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def image_seeds(request):
    """Each test's images from seeds of its own id (harness.fresh_seed): the same alone,
    in a subset or in any order."""
    harness.seed_images(request.node.nodeid)


@pytest.fixture(scope="module")
def stock_engines():
    """``start_engine`` with the zspa plugin excluded through VLLM_PLUGINS; one engine
    alive at a time, freed at module end.

    vLLM loads general plugins once per process (vllm.plugins.plugins_loaded), at the
    first engine: whether zspa is active is decided by the first engine a pytest process
    starts. Tests using this fixture should assert the model class is vLLM's own."""
    old = os.environ.get("VLLM_PLUGINS")
    os.environ["VLLM_PLUGINS"] = STOCK_VLLM_PLUGINS
    try:
        yield start_engine
    finally:
        free_engine()
        if old is None:
            os.environ.pop("VLLM_PLUGINS", None)
        else:
            os.environ["VLLM_PLUGINS"] = old


@pytest.fixture(scope="module")
def zspa_engines():
    """``start_engine`` with the zspa plugin's overrides registered in this process.

    Registration is process-wide and cannot be undone: modules using this fixture run
    after the stock smoke tests (file order), and compare with stock vLLM through
    tests/engine/stock_reference.py, which runs in a child process."""
    import zspa_vllm

    zspa_vllm.register()
    # vLLM memoises the resolved model class per model path (model_loader/utils.py,
    # _MODEL_ARCH_BY_HASH): a stock engine started earlier in this process on the same
    # fixture would otherwise keep its stock class even after our override registered.
    from vllm.model_executor.model_loader import utils as loader_utils

    loader_utils._MODEL_ARCH_BY_HASH.clear()
    try:
        yield start_engine
    finally:
        free_engine()


# "reverse" or an integer seed (shuffled): the order of the test modules, to show that no
# module depends on what an earlier one left behind (inside a module, tests keep their
# order: module-scoped engines and the tests that start a second engine last rely on it)
ORDER_ENV = "ZSPA_TEST_ORDER"


def pytest_collection_modifyitems(config, items):
    """Tests on stock vLLM in this process (the stock_engines fixture) first: once a test
    registers the plugin, the process's model registry is ours for good. Otherwise file
    order, or the module order ZSPA_TEST_ORDER asks for."""
    stock_modules = {item.module for item in items if "stock_engines" in getattr(item, "fixturenames", ())}
    modules = list(dict.fromkeys(item.module for item in items))
    order = os.environ.get(ORDER_ENV, "").strip()
    if order == "reverse":
        modules.reverse()
    elif order:
        if not order.isdigit():
            raise pytest.UsageError(f"{ORDER_ENV} must be 'reverse' or an integer seed, got {order!r}")
        random.Random(int(order)).shuffle(modules)
    rank = {module: i for i, module in enumerate(modules)}
    items.sort(key=lambda item: (item.module not in stock_modules, rank[item.module]))  # stable inside a module


def pytest_terminal_summary(terminalreporter):
    if harness.STARTUP_SECONDS:
        terminalreporter.write_sep("-", "vLLM engine start-up (LLM(...) wall time)")
        runners = [name.rsplit(" ", 1)[-1] for name, _ in harness.STARTUP_SECONDS]
        terminalreporter.write_line("engines per runner: " + ", ".join(f"{r} {runners.count(r)}" for r in sorted(set(runners))))
        for name, seconds in harness.STARTUP_SECONDS:
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
