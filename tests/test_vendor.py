"""The vendored core is a pinned submodule, and the offline fill from the PyPI sdist proves the pin."""

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("vendor_core", REPO_ROOT / "tools" / "vendor_core.py")
vendor_core = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vendor_core)


def test_submodule_is_a_gitlink_at_the_pinned_commit():
    if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    entries = subprocess.run(["git", "ls-files", "-s", "--", "vendor"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split("\n")
    entries = [e for e in entries if e]
    assert entries == [f"160000 {vendor_core.PINNED_COMMIT} 0\tvendor/stable-diffusion.cpp"]
    assert "stable-diffusion.cpp" in (REPO_ROOT / ".gitmodules").read_text()


def test_vendored_sources_are_the_pinned_ones():
    vendor_core.verify_pin(vendor_core.DEFAULT_DEST)


def test_a_changed_core_file_is_refused(tmp_path):
    for name in vendor_core.PINNED_BLOBS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(vendor_core.DEFAULT_DEST / name, tmp_path / name)
    with open(tmp_path / "include" / "stable-diffusion.h", "a") as header:
        header.write("// local edit\n")
    with pytest.raises(vendor_core.VendorError, match="not the pinned commit"):
        vendor_core.verify_pin(tmp_path)


def test_git_blob_hash_matches_git(tmp_path):
    sample = tmp_path / "x.txt"
    sample.write_bytes(b"hello\n")
    assert vendor_core.git_blob_hash(sample) == "ce013625030ba8dba906f756967f9e9ca394464a"


def _cached_sdist() -> Path:
    path = vendor_core.cache_dir() / vendor_core.SDIST_NAME
    if not path.is_file():
        pytest.skip("the pinned sdist is not in the cache (the build fetches it only when the submodule is empty)")
    return path


def test_fill_from_cached_sdist_offline(tmp_path, monkeypatch):
    sdist = _cached_sdist()
    monkeypatch.setenv("SDCPP_PY_CACHE_DIR", str(sdist.parent))
    monkeypatch.setattr(vendor_core, "try_git_submodule", lambda dest: False)
    # No network use: a download attempt would fail the test.
    monkeypatch.setattr(vendor_core.subprocess, "run", lambda *a, **k: pytest.fail("tried to download"))
    dest = tmp_path / "core"
    assert vendor_core.ensure_vendor(dest) == "pypi sdist"
    assert (dest / "ggml" / "CMakeLists.txt").is_file()
    assert "sha256" in (dest / vendor_core.ORIGIN_MARKER).read_text()
    assert vendor_core.ensure_vendor(dest) == "present"


def test_a_tampered_sdist_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / vendor_core.SDIST_NAME
    with tarfile.open(fake, "w:gz"):
        pass
    monkeypatch.setenv("SDCPP_PY_CACHE_DIR", str(tmp_path))

    def fake_download(command, **kwargs):  # pip "succeeds" but delivers the wrong bytes
        Path(command[command.index("--dest") + 1], vendor_core.SDIST_NAME).write_bytes(fake.read_bytes())
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(vendor_core.subprocess, "run", fake_download)
    assert hashlib.sha256(fake.read_bytes()).hexdigest() != vendor_core.SDIST_SHA256
    with pytest.raises(vendor_core.VendorError, match="sha256"):
        vendor_core.ensure_vendor(tmp_path / "core", allow_git=False)


def test_sdist_carries_what_compiles_and_leaves_out_docs_and_tests(tmp_path):
    # scikit-build-core's own PEP 517 hook, as `pip`/`build` call it (the project's file selection).
    script = "import sys; from scikit_build_core.build import build_sdist; print(build_sdist(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    name = result.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {member.name.split("/", 1)[1] for member in sdist.getmembers() if "/" in member.name}
    core = "vendor/stable-diffusion.cpp/"
    for needed in ("CMakeLists.txt", "pyproject.toml", "bindings/module.cpp", "tools/vendor_core.py",
                   "tools/patch_core.py", "patches/0001-abort-diffusion-compute.patch",
                   "kernels/sdcpp_py_packed_gemm.h",
                   "src/sdcpp_py/__init__.py", "src/sdcpp_py/_core.pyi", "src/sdcpp_py/py.typed",
                   "cmake/extension.cmake", "bindings/testing/module.cpp",
                   core + "CMakeLists.txt", core + "src/stable-diffusion.cpp", core + "include/stable-diffusion.h",
                   core + "ggml/CMakeLists.txt", core + "ggml/src/ggml-cpu/llamafile/sgemm.cpp",
                   core + "thirdparty/zip.c", core + "examples/cli/main.cpp", core + "examples/common/common.cpp"):
        assert needed in members, needed
    for left_out in (core + "docs/", core + "ggml/tests/", core + "ggml/examples/", core + "thirdparty/libwebp/",
                     core + "examples/server/", core + "Dockerfile", core + ".github/", "build/"):
        assert not any(m.startswith(left_out) for m in members), left_out
