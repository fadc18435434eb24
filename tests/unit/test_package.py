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


def test_register_is_reentrant():
    zspa_vllm.register()
    zspa_vllm.register()


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
