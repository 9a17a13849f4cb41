"""What the native-kernel tests (test_cpu_*.py, test_robustness.py's parser tests) share: the test hooks
module and the CPU facts of this build. A helper module, not a test.

sdcpp_py._test_hooks is built by source installs (CMake option SDCPP_PY_TESTING, ON by default) and left out of
release wheels: `hooks()` skips the calling test without it.
"""

import re

import pytest

import sdcpp_py


def hooks():
    """sdcpp_py._test_hooks, or a skip when this build has none (a release wheel)."""
    return pytest.importorskip("sdcpp_py._test_hooks",
                               reason="no sdcpp_py._test_hooks: a release build (SDCPP_PY_TESTING=OFF)")


def compiled_with(feature):
    return re.search(rf"\b{feature} = 1\b", sdcpp_py.system_info()) is not None


# Patch 0004's kernel is compiled where ggml's CPU code is built for AVX2 + FMA + F16C (AVX-512 CPUs included).
PACKED_KERNEL = all(map(compiled_with, ("AVX2", "FMA", "F16C")))
