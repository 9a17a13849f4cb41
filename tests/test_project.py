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
    assert commands[1].startswith("python -m pytest")


def test_ci_runs_the_readme_commands():
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    for command in _readme_commands():
        assert command in (line.strip() for line in ci), f"CI does not run the README command: {command}"
