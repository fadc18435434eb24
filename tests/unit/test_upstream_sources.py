"""Every vLLM internal the plugin relies on, checked on the sources of each supported
release (tests/upstream/pins.py), 0.33 and 0.34 included though only 0.32 is installed.

``make check-upstream VLLM=X.Y.Z`` runs this file against one release: each failure names
a reliance that release changed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.upstream import pins, sources
from zspa_vllm import vllm_touch_points, vllm_versions
from zspa_vllm.engine import encoder_budget

REPO = Path(__file__).resolve().parents[2]
CHECKED = pins.releases_to_check()


def _cases(table_of):
    return [
        pytest.param(series, release, key, id=f"{release}:{key}")
        for series, release in CHECKED
        for key in table_of(series)
    ]


def _pinned_cases(table_of):
    """The catalogued places (zspa_vllm/vllm_touch_points.py) that ``table_of(series)`` pins."""
    return _cases(lambda series: [key for key in vllm_touch_points.targets() if key in table_of(series)])


def _pinned_somewhere() -> set[str]:
    paths = {*pins.FIELDS, *pins.HAS_FIELDS}
    for series in pins.RELEASES:
        paths |= {*pins.SIGNATURES[series], *pins.SNIPPETS[series]}
    return paths


def test_every_pin_is_catalogued_and_every_catalogued_place_pinned():
    catalogued = set(vllm_touch_points.targets())
    assert _pinned_somewhere() - catalogued == set(), "pinned in tests/upstream/pins.py but not in zspa_vllm/vllm_touch_points.py"
    assert catalogued - _pinned_somewhere() == set(), "catalogued but pinned for no release"


def test_each_touch_point_says_what_why_where_and_its_runtime_check_exists():
    for point in vllm_touch_points.TOUCH_POINTS:
        assert point.how in (vllm_touch_points.SUBCLASSED, vllm_touch_points.OVERRIDDEN, vllm_touch_points.WRAPPED,
                             vllm_touch_points.REGISTERED, vllm_touch_points.READ, vllm_touch_points.CALLED), point
        assert point.why and point.targets, point
        for module in point.where.replace("*", "").split(", "):
            assert (REPO / module).exists() or (REPO / "zspa_vllm/models" / module).exists() or "*" in point.where, module
        if point.checked_by:
            path, _, test = point.checked_by.partition("::")
            assert f"def {test}(" in (REPO / path).read_text(), point.checked_by


@pytest.mark.parametrize("series, release, path", _pinned_cases(lambda series: pins.SIGNATURES[series]))
def test_signature_is_the_pinned_one(series, release, path):
    found = sources.signature(release, path)
    assert found == pins.SIGNATURES[series][path], (
        f"vLLM {release} changed {path}: pinned {pins.SIGNATURES[series][path]}, found {found}; "
        "review the zspa override that relies on it"
    )


@pytest.mark.parametrize("series, release, path", _pinned_cases(lambda series: pins.SNIPPETS[series]))
def test_source_still_says_what_the_plugin_relies_on(series, release, path):
    text = sources.source(release, path)
    snippets = pins.SNIPPETS[series][path]
    if not snippets:
        assert text is None, f"vLLM {release} has {path} again"
        return
    assert text is not None, f"vLLM {release} has no {path}"
    missing = [s for s in snippets if sources.normalized(s) not in sources.normalized(text)]
    assert not missing, f"vLLM {release}'s {path} no longer contains {missing}"


@pytest.mark.parametrize("series, release, path", _pinned_cases(lambda series: {**pins.FIELDS, **pins.HAS_FIELDS}))
def test_dataclass_fields(series, release, path):
    found = sources.fields(release, path)
    if path in pins.FIELDS:
        assert found == pins.FIELDS[path]
    else:
        assert found is not None and set(pins.HAS_FIELDS[path]) <= set(found), found


def _vllm_imports() -> set[tuple[str, str]]:
    names = set()
    for package in ("zspa_vllm", "zspa_serve", "zspa_eval", "zspa_demo"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
                    names.update((node.module, alias.name) for alias in node.names)
    return names


@pytest.mark.parametrize("series, release", CHECKED, ids=[r for _, r in CHECKED])
def test_every_vllm_name_the_package_imports_exists(series, release):
    imports = _vllm_imports()
    assert ("vllm.multimodal", "MULTIMODAL_REGISTRY") in imports  # the scan sees the package
    missing = [
        f"{module}:{name}"
        for module, name in sorted(imports)
        if sources.find(release, f"{module}:{name}") is None and sources.module_file(release, f"{module}.{name}") is None
    ]
    assert not missing, f"vLLM {release} lacks {missing}"


@pytest.mark.parametrize("series, release, name", _cases(lambda series: vllm_versions.LOCATIONS))
def test_each_moved_name_is_where_compat_looks_for_it(series, release, name):
    location = vllm_versions.since(vllm_versions.LOCATIONS[name], release)
    assert sources.find(release, location) is not None, f"vLLM {release} has no {location}"


@pytest.mark.parametrize("series, release", CHECKED, ids=[r for _, r in CHECKED])
def test_scheduler_tables_follow_the_release(series, release):
    """zspa_vllm.vllm_versions's scheduler facts, read off the release's own code."""
    schedule = sources.normalized(sources.source(release, "vllm.v1.core.sched.scheduler:Scheduler.schedule"))
    requeues = "Encoder cache pressure must not split a prompt" in schedule
    assert vllm_versions.since(vllm_versions.REQUEUES_CUT_WHOLE_PROMPTS, release) is requeues
    try_encoder = sources.normalized(
        sources.source(release, "vllm.v1.core.sched.scheduler:Scheduler._try_schedule_encoder_inputs")
    )
    keeps_shift = "num_new_tokens = start_pos - (num_computed_tokens + shift_computed_tokens)" in try_encoder
    assert vllm_versions.since(vllm_versions.ROLLBACK_KEEPS_DRAFTER_SHIFT, release) is keeps_shift
    # the async scheduler inherits the method the mixin wraps
    assert not sources.class_defines(
        release, "vllm.v1.core.sched.async_scheduler:AsyncScheduler", "_try_schedule_encoder_inputs"
    )


@pytest.mark.parametrize("series, release", CHECKED, ids=[r for _, r in CHECKED])
def test_every_mrv2_runner_of_the_release_has_its_pruner_hooked(series, release):
    """Each Model Runner V2 variant that builds an M-RoPE pruner is in vllm_versions.PRUNER_FACTORIES."""
    hooked = {factory for _, factory, _ in vllm_versions.since(vllm_versions.PRUNER_FACTORIES, release)}
    root = sources.source_root(release) / "vllm" / "v1" / "worker"
    defining = {
        ".".join(path.relative_to(root.parents[2]).with_suffix("").parts)
        for path in root.rglob("*.py")
        if "def maybe_create_mm_pruner(" in path.read_text()
    }
    assert defining == hooked
    for runner, factory, state in vllm_versions.since(vllm_versions.PRUNER_FACTORIES, release):
        assert sources.module_file(release, runner) is not None, runner
        assert sources.signature(release, f"{factory}:maybe_create_mm_pruner") == pins.SIGNATURES[series].get(
            f"{factory}:maybe_create_mm_pruner"
        )
        assert f"from {factory} import maybe_create_mm_pruner" in sources.source(release, state)


@pytest.mark.parametrize("series, release, arch", _cases(lambda series: ("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")))
def test_qwen3_5_is_qwen3_vl_on_the_vision_side(series, release, arch):
    """zspa_vllm.models.qwen3_5 / qwen3_5_moe say only that they are Qwen3.5: the class
    vLLM registers (vllm_versions.LOCATIONS) takes its image encoding and M-RoPE rule from
    Qwen3-VL unchanged, and its processor is Qwen3-VL's."""
    module, _, name = vllm_versions.since(vllm_versions.LOCATIONS[arch], release).partition(":")
    assert _registered(release, arch) == (module, name), f"vLLM {release} registers {arch} elsewhere"
    path = f"{module}:{name}"
    chain = [path]
    while not chain[-1].endswith(":Qwen3VLForConditionalGeneration"):
        found = sources.find(release, chain[-1])
        assert found is not None and len(chain) < 4, chain
        base = ast.unparse(found[0].bases[0])
        chain.append(f"{module}:{base}")
    for cls in chain[:-1]:
        for method in ("embed_multimodal", "get_mrope_input_positions", "recompute_mrope_positions", "_process_image_input"):
            assert not sources.class_defines(release, cls, method), (cls, method)
    decorator = ast.unparse(sources.find(release, path)[0].decorator_list[0])
    assert decorator.startswith("MULTIMODAL_REGISTRY.register_processor(Qwen3VLMultiModalProcessor"), decorator


def _registered(release: str, arch: str) -> tuple[str, str] | None:
    """(module, class) vLLM's model registry maps an architecture to."""
    tree = ast.parse(sources.source(release, "vllm.model_executor.models.registry"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == arch and isinstance(value, ast.Tuple):
                    module, cls = (element.value for element in value.elts)
                    return (module if module.startswith("vllm.") else f"vllm.model_executor.models.{module}"), cls
    return None


def test_the_rollback_follows_each_release():
    """encoder_budget.tokens_before_item: the tokens before an item left for the next step.
    0.32 keeps a drafter's read-ahead (shift 2) out of the item; 0.33 and 0.34 do not."""
    # 100 tokens computed, the item starts at 130, 64 tokens asked for this step
    assert encoder_budget.tokens_before_item(130, 100, 2, 64, version="0.32.0") == 28
    for version in ("0.33.0", "0.34.0"):
        assert encoder_budget.tokens_before_item(130, 100, 2, 64, version=version) == 30
    # a prefix cache hit ended inside the item: nothing this step, on every release
    for version in ("0.32.0", "0.33.0", "0.34.0"):
        assert encoder_budget.tokens_before_item(130, 140, 0, 64, version=version) == 0
        assert encoder_budget.tokens_before_item(130, 120, 0, 4, version=version) == 4  # never more than asked


def test_a_whole_prompt_opening_a_step_is_never_cut_on_a_release_that_requeues_it():
    for version, requeues in (("0.32.0", False), ("0.33.0", False), ("0.34.0", True)):
        assert encoder_budget.must_stay_whole(True, chunked_prefill=False, version=version) is requeues
        assert not encoder_budget.must_stay_whole(True, chunked_prefill=True, version=version)
        assert not encoder_budget.must_stay_whole(False, chunked_prefill=False, version=version)
