"""sdcpp_py.testing: kept out of `import sdcpp_py`, and the install check builds its parts from the modules
release wheels ship (RELEASE_MODULES) alone."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

import sdcpp_py.testing


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_importing_the_package_leaves_the_testing_modules_alone():
    result = run_python("""
        import sys
        import sdcpp_py, sdcpp_py.cli
        assert not [m for m in sys.modules if m.startswith("sdcpp_py.testing")], "import sdcpp_py loaded them"
        import sdcpp_py.selfcheck
        print(sorted(m.rpartition(".")[2] for m in sys.modules if m.startswith("sdcpp_py.testing.")))
    """)
    assert result.returncode == 0, result.stderr
    assert set(eval(result.stdout)) <= set(sdcpp_py.testing.RELEASE_MODULES)


def test_the_install_check_builds_its_parts_from_the_release_modules(tmp_path):
    present = {path.stem for path in pathlib.Path(sdcpp_py.testing.__file__).parent.glob("*.py")}
    assert set(sdcpp_py.testing.RELEASE_MODULES) < present
    result = run_python(f"""
        import importlib.abc, sys
        import sdcpp_py.testing

        class ReleaseWheel(importlib.abc.MetaPathFinder):  # as if the other modules were left out of the wheel
            def find_spec(self, name, path=None, target=None):
                package, _, module = name.rpartition(".")
                if package == "sdcpp_py.testing" and module not in sdcpp_py.testing.RELEASE_MODULES:
                    raise ImportError(f"{{name}} is not in a release wheel")

        sys.meta_path.insert(0, ReleaseWheel())
        from sdcpp_py import selfcheck
        parts = selfcheck.flux_components({str(tmp_path)!r})
        assert sorted(parts) == ["clip_l", "diffusion_model", "vae"], parts
    """)
    assert result.returncode == 0, result.stderr


def test_release_wheels_exclude_exactly_the_modules_outside_release_modules():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((pathlib.Path(__file__).parent.parent / "pyproject.toml").read_text())
    [release] = [o for o in project["tool"]["scikit-build"]["overrides"] if "SDCPP_PY_TESTING" in o["if"]["env"]]
    excluded = {pathlib.PurePosixPath(path).stem for path in release["wheel"]["exclude"]}
    present = {path.stem for path in pathlib.Path(sdcpp_py.testing.__file__).parent.glob("*.py")}
    assert excluded == present - set(sdcpp_py.testing.RELEASE_MODULES)
