"""Project guards: the README's commands are what CI runs."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list:
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_the_install_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "pip install" in commands[0] and "sdcpp_py.selfcheck" in commands[0]
    assert commands[1].startswith(".venv/bin/python -m pytest")
    assert commands[0].startswith("bash tools/prerequisites.sh && python3 -m venv")  # a bare Debian has no `python`


def test_ci_runs_the_readme_commands():
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    for command in _readme_commands():
        assert command in (line.strip() for line in ci), f"CI does not run the README command: {command}"


def _configure(tmp_path, backend: str, *defines: str):
    import os
    import subprocess
    import sys

    import pybind11

    env = {**os.environ, "SDCPP_BACKEND": backend}
    return subprocess.run(["cmake", "-S", str(REPO_ROOT), "-B", str(tmp_path / "build"),
                           f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                           *defines], capture_output=True, text=True, env=env)


def test_sdcpp_backend_environment_switch(tmp_path):
    bogus = _configure(tmp_path, "opencl")
    assert bogus.returncode != 0
    assert "SDCPP_BACKEND=opencl: expected cpu, cuda, vulkan or metal" in bogus.stderr
    # The short switch wins over a backend left on (e.g. in a reused build folder's cache).
    cpu = _configure(tmp_path, "CPU", "-DSD_VULKAN=ON")
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    assert "sdcpp-py backend: cpu" in cpu.stdout
