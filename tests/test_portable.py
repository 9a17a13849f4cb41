"""The portable CPU wheel (tools/portable_build.sh, run by .ci/run): ggml's CPU variants in the wheel, the best
one for this machine loaded at import, found from inside the installed package.

The wheel lives in its own virtual environment (one distribution name per environment), so its checks run
there in a child process, started outside the source tree, and are compared here with this (native) build.
Without that environment the tests skip, saying how to make it.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import sdcpp_py

REPO_ROOT = Path(__file__).resolve().parent.parent
PORTABLE_PYTHON = Path(os.environ.get("SDCPP_PY_PORTABLE_PYTHON",
                                      REPO_ROOT / "build" / "portable-venv" / "bin" / "python"))

pytestmark = pytest.mark.skipif(not PORTABLE_PYTHON.exists(),
                                reason=f"no portable build at {PORTABLE_PYTHON}: run tools/portable_build.sh")

REPORT = """
import json, sys
import sdcpp_py
from pathlib import Path
package = Path(sdcpp_py.__file__).parent
report = sdcpp_py.backends()
print(json.dumps({"package": str(package), "variants": sorted(p.name for p in package.glob("libggml-cpu-*")),
                  "portable": report["portable_cpu"], "features": report["cpu_features"],
                  "kernels": report["fused_cpu_kernels"], "precisions": report["cpu_precisions"],
                  "bf16_products": report["cpu_bf16_products"],
                  "system_info": sdcpp_py.system_info(),
                  "devices": [(d.name, d.type) for d in sdcpp_py.devices()]}))
"""

GENERATE = """
import sys
import numpy as np
import sdcpp_py
with sdcpp_py.Context(model=sys.argv[1], n_threads=2) as ctx:
    image = ctx.txt2img("a red cube", width=128, height=128, steps=2, cfg_scale=7.0, seed=42)[0]
np.save(sys.argv[2], image)
"""

# The test hooks module links the same shared ggml as _core: the CPU variant `import sdcpp_py` loaded serves it.
HOOKS = """
import json
import numpy as np
import sdcpp_py
from sdcpp_py import _test_hooks
rng = np.random.default_rng(0)
a, b = rng.standard_normal((33, 64)).astype(np.float16), rng.standard_normal((7, 64)).astype(np.float32)
q = rng.standard_normal((40, 64)).astype(np.float32)
attention, ops, _ = _test_hooks._cpu_attention(q, q, q, 4, 2)
print(json.dumps({"mul_mat": _test_hooks._cpu_mul_mat(a, b, 2).tolist(), "attention": attention.tolist(),
                  "mul_mat_bf16": _test_hooks._cpu_mul_mat(a, b, 2, bf16=True).tolist(),
                  "ops": ops, "pieces": _test_hooks._parse_prompt_attention("a (b:1.5) BREAK c")}))
"""


def run_portable(code, *args):
    # From outside the source tree, so that `import sdcpp_py` can only be the installed wheel.
    result = subprocess.run([str(PORTABLE_PYTHON), "-c", code, *args], capture_output=True, text=True,
                            cwd="/", timeout=900)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def portable_report():
    return json.loads(run_portable(REPORT).stdout.strip().splitlines()[-1])


def test_portable_build_imports_and_loads_a_cpu_variant(portable_report):
    assert portable_report["portable"] is True
    assert "site-packages" in portable_report["package"], portable_report["package"]
    # Every x86-64 level from the baseline up (or the ARM ones), as modules inside the package.
    assert len(portable_report["variants"]) >= 4, portable_report["variants"]
    assert any(name.startswith("libggml-cpu-x64") or name.startswith("libggml-cpu-armv8.0")
               for name in portable_report["variants"])
    assert [device for device in portable_report["devices"] if device[1] == "cpu"]
    # The core's system info comes from the loaded variant (patch 0010), in the static build's form.
    assert "System Info" in portable_report["system_info"]
    for feature, value in portable_report["features"].items():
        if value == "1":
            assert f"{feature} = 1" in portable_report["system_info"]


def test_portable_import_is_quiet_and_logs_the_loaded_variant():
    # ggml prints the variant it loads on stderr; the import routes it to the "sdcpp_py" logger instead.
    quiet = run_portable("import sdcpp_py")
    assert quiet.stdout == "" and quiet.stderr == "", quiet.stderr[-2000:]
    verbose = run_portable("import logging; logging.basicConfig(level=logging.DEBUG, format='%(name)s %(message)s');"
                           "import sdcpp_py")
    assert "sdcpp_py load_backend: loaded CPU backend from" in verbose.stderr, verbose.stderr[-2000:]
    assert "libggml-cpu-" in verbose.stderr


def test_portable_build_loads_the_best_variant_for_this_cpu(portable_report):
    native = sdcpp_py.backends()
    assert native["portable_cpu"] is False
    # The native build is compiled for exactly this CPU: the chosen variant must use the same vector units
    # (a fallback to the baseline would lack them), and so has the same fused kernels.
    for feature in ("SSE3", "AVX", "AVX2", "F16C", "FMA", "AVX512", "NEON"):
        assert (feature in portable_report["features"]) == (feature in native["cpu_features"]), \
            (feature, portable_report["features"], native["cpu_features"])
    assert portable_report["kernels"] == native["fused_cpu_kernels"]
    # bf16 products where the variant has AVX512_BF16 (zen4, cooperlake, sapphirerapids), as natively, and on
    # AMX tiles where the CPU has them (sapphirerapids: its functions name amx-bf16, which the variant lacks).
    assert portable_report["precisions"] == native["cpu_precisions"]
    assert portable_report["bf16_products"] == native["cpu_bf16_products"]


def test_portable_build_gives_the_native_build_pixels(tmp_path, sd1_checkpoint):
    out = tmp_path / "portable.npy"
    run_portable(GENERATE, str(sd1_checkpoint), str(out))
    portable = np.load(out)
    with sdcpp_py.Context(model=str(sd1_checkpoint), n_threads=2) as ctx:
        native = ctx.txt2img("a red cube", width=128, height=128, steps=2, cfg_scale=7.0, seed=42)[0]
    assert portable.shape == native.shape == (128, 128, 3)
    difference = np.abs(portable.astype(np.int16) - native.astype(np.int16))
    assert difference.max() == 0, f"max {difference.max()}, mean {difference.mean():.3f}"


def test_portable_build_test_hooks_run_on_the_loaded_variant():
    native = pytest.importorskip("sdcpp_py._test_hooks", reason="no sdcpp_py._test_hooks in this build")
    if "_test_hooks" not in run_portable("import sdcpp_py, pkgutil; "
                                      "print([m.name for m in pkgutil.iter_modules(sdcpp_py.__path__)])").stdout:
        pytest.skip("the portable build was made with SDCPP_PY_TESTING=OFF")
    portable = json.loads(run_portable(HOOKS).stdout.strip().splitlines()[-1])
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((33, 64)).astype(np.float16), rng.standard_normal((7, 64)).astype(np.float32)
    q = rng.standard_normal((40, 64)).astype(np.float32)
    attention, ops, _ = native._cpu_attention(q, q, q, 4, 2)
    np.testing.assert_allclose(portable["mul_mat"], native._cpu_mul_mat(a, b, 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(portable["mul_mat_bf16"], native._cpu_mul_mat(a, b, 2, bf16=True), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(portable["attention"], attention, rtol=1e-5, atol=1e-6)
    assert portable["ops"] == ops
    assert [tuple(piece) for piece in portable["pieces"]] == native._parse_prompt_attention("a (b:1.5) BREAK c")
