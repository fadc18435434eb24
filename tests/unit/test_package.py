"""The installed distribution: entry point, registration, version pin."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

import zspa_vllm
from zspa_vllm.vllm_versions import unsupported_reason, check_vllm_version, installed_vllm_version


def test_entry_point_is_declared_for_vllm():
    (entry,) = [e for e in metadata.entry_points(group="vllm.general_plugins") if e.name == "zspa"]
    assert entry.value == "zspa_vllm:register"
    assert entry.load() is zspa_vllm.register


REGISTER_CHECK = """
import sys, zspa_vllm
from vllm import ModelRegistry
before = dict(ModelRegistry.models)
zspa_vllm.register()
zspa_vllm.register()
changed = {a: (m.module_name, m.class_name) for a, m in ModelRegistry.models.items() if m is not before.get(a)}
print(repr((changed, sorted(k for k in sys.modules if k.startswith("zspa_vllm.models")))))
"""


def test_register_is_reentrant_lazy_and_touches_only_our_architectures():
    # in a child process: registration is process-wide and would leak into engine tests
    out = subprocess.run([sys.executable, "-c", REGISTER_CHECK], capture_output=True, text=True, check=True)
    changed, imported = eval(out.stdout.strip().splitlines()[-1])
    assert changed == {arch: tuple(target.split(":")) for arch, target in zspa_vllm.MODEL_OVERRIDES.items()}
    assert set(changed) == {
        "LlavaForConditionalGeneration",
        "LlavaNextForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3_5ForConditionalGeneration",
        "Qwen3_5MoeForConditionalGeneration",
        "LlavaOnevisionForConditionalGeneration",
        "InternVLForConditionalGeneration",
        "Gemma3ForConditionalGeneration",
    }
    assert imported == []  # nothing of ours is imported until vLLM resolves the model


def test_importing_the_package_does_not_import_vllm():
    code = "import sys, zspa_vllm; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_installed_vllm_is_the_pinned_series():
    check_vllm_version()
    assert installed_vllm_version().startswith("0.32.")


@pytest.mark.parametrize("version", ["0.31.2", "0.35.0", "1.0.0", "0.3.2"])
def test_other_vllm_versions_are_refused_by_name(version):
    with pytest.raises(RuntimeError, match=f"found vLLM {version}"):
        check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.32.0", "0.32.0+cpu", "0.33.0", "0.33.1", "0.34.0", "0.34.2+cu130"])
def test_every_supported_series_is_accepted(version):
    assert unsupported_reason(version) is None


def test_a_version_difference_is_looked_up_by_series():
    """zspa_vllm.vllm_versions: each table maps the first series a fact holds for to the fact."""
    from zspa_vllm import vllm_versions

    assert vllm_versions.since(vllm_versions.LOCATIONS["make_arg_parser"], "0.32.0").startswith("vllm.entrypoints.launchers.")
    assert vllm_versions.since(vllm_versions.LOCATIONS["make_arg_parser"], "0.33.0").startswith("vllm.entrypoints.common.")
    assert vllm_versions.since(vllm_versions.LOCATIONS["make_arg_parser"], "0.34.1") == vllm_versions.LOCATIONS["make_arg_parser"]["0.33"]
    assert vllm_versions.since(vllm_versions.LOCATIONS["Qwen3_5ForConditionalGeneration"], "0.33.0").startswith("vllm.model_executor.")
    assert vllm_versions.since(vllm_versions.LOCATIONS["Qwen3_5ForConditionalGeneration"], "0.34.0").startswith("vllm.models.qwen3_5:")
    assert len(vllm_versions.since(vllm_versions.PRUNER_FACTORIES, "0.33.0")) == 1
    assert len(vllm_versions.since(vllm_versions.PRUNER_FACTORIES, "0.34.0")) == 2
    with pytest.raises(LookupError, match="0.31"):
        vllm_versions.since(vllm_versions.LOCATIONS["make_arg_parser"], "0.31.0")
    # the installed release resolves to real objects
    assert callable(vllm_versions.vllm_object("make_arg_parser")) and callable(vllm_versions.vllm_object("cli_env_setup"))


STAND_ASIDE_CHECK = """
import sys, vllm
vllm.__version__ = sys.argv[1]  # what a newer or older vLLM reports
import zspa_vllm
from vllm import ModelRegistry
before = {a: (m.module_name, m.class_name) for a, m in ModelRegistry.models.items()}
zspa_vllm.register()
zspa_vllm.register()
after = {a: (m.module_name, m.class_name) for a, m in ModelRegistry.models.items()}
print(repr((before == after, sorted(k for k in sys.modules if k.startswith("zspa_vllm.")))))
"""


@pytest.mark.parametrize("version", ["0.31.2", "0.35.0"])
def test_next_to_another_vllm_the_plugin_registers_nothing_and_says_so_once(version):
    # vLLM calls general plugins without a try: raising would kill every vLLM process
    out = subprocess.run([sys.executable, "-c", STAND_ASIDE_CHECK, version], capture_output=True, text=True, check=True)
    unchanged, imported = eval(out.stdout.strip().splitlines()[-1])
    assert unchanged
    assert imported == ["zspa_vllm.vllm_versions"]  # nothing else of ours loaded
    warnings = [line for line in out.stderr.splitlines() if "registers nothing" in line]
    assert len(warnings) == 1, out.stderr
    assert f"found vLLM {version}" in warnings[0] and "supports vLLM 0.32.x, 0.33.x, 0.34.x" in warnings[0]


def test_the_supported_vllm_registers_our_models():
    # the sensitivity of the check above: the same script at the installed version changes the registry
    out = subprocess.run([sys.executable, "-c", STAND_ASIDE_CHECK, installed_vllm_version()], capture_output=True, text=True, check=True)
    unchanged, _ = eval(out.stdout.strip().splitlines()[-1])
    assert not unchanged
    assert "registers nothing" not in out.stderr


ZSPA_SERVE_CHECK = """
import sys, vllm
vllm.__version__ = "0.35.0"
from zspa_serve.cli import main
main(["--demo"])
"""


def test_zspa_serve_exits_2_next_to_another_vllm():
    out = subprocess.run([sys.executable, "-c", ZSPA_SERVE_CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "zspa-serve: zspa-vllm" in out.stderr and "found vLLM 0.35.0" in out.stderr


def test_distribution_metadata():
    assert metadata.version("zspa-vllm") == zspa_vllm.__version__
    requires = SpecifierSet(metadata.metadata("zspa-vllm")["Requires-Python"])
    assert "3.11.7" in requires and "3.10.12" not in requires


def test_every_run_has_a_per_test_timeout_and_reports_durations(pytestconfig):
    assert float(pytestconfig.getini("timeout")) == 900
    assert pytestconfig.option.durations == 30


INTERPRETER_CHECK = """
import os, sys, zspa_vllm
zspa_vllm.register()
from vllm.triton_utils.importing import HAS_TRITON
print(repr(("zspa_triton_interpreter" in sys.modules, os.environ.get("TRITON_INTERPRET"), HAS_TRITON)))
"""


def test_the_package_never_switches_triton_to_its_interpreter():
    # the MRv2-on-CPU shim belongs to the test environment (scripts/bootstrap.sh), loaded
    # only when VLLM_USE_V2_MODEL_RUNNER is set; the plugin alone leaves Triton as it is
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_USE_V2_MODEL_RUNNER", "TRITON_INTERPRET")}
    out = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], capture_output=True, text=True, check=True, env=env)
    assert eval(out.stdout.strip().splitlines()[-1]) == (False, None, False)
    out = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], capture_output=True, text=True, check=True, env={**env, "VLLM_USE_V2_MODEL_RUNNER": "1"})
    assert eval(out.stdout.strip().splitlines()[-1]) == (True, "1", True)
    installed = [str(f) for f in metadata.files("zspa-vllm") or []]
    assert installed and not any("triton" in f for f in installed)


def test_the_gpu_extra_allows_exactly_the_supported_series():
    """pyproject's vLLM range and zspa_vllm/vllm_versions.py name the same releases."""
    import tomllib

    from zspa_vllm.vllm_versions import SUPPORTED_SERIES

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    (requirement,) = project["optional-dependencies"]["gpu"]
    major, minor = map(int, SUPPORTED_SERIES[-1].split("."))
    assert requirement == f"vllm>={SUPPORTED_SERIES[0]}.0,<{major}.{minor + 1}"
