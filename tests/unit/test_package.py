"""The installed distribution: entry point, registration, version pin."""

import subprocess
import sys
from importlib import metadata

import pytest
from packaging.specifiers import SpecifierSet

import zspa_vllm
from zspa_vllm.compat import check_vllm_version, installed_vllm_version


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


@pytest.mark.parametrize("version", ["0.31.2", "0.33.0", "1.0.0"])
def test_other_vllm_versions_are_refused_by_name(version):
    with pytest.raises(RuntimeError, match=f"found vLLM {version}"):
        check_vllm_version(version)


def test_distribution_metadata():
    assert metadata.version("zspa-vllm") == zspa_vllm.__version__
    requires = SpecifierSet(metadata.metadata("zspa-vllm")["Requires-Python"])
    assert "3.11.7" in requires and "3.10.12" not in requires
