"""The wheel workflows: valid GitHub Actions files (checked against the workflow schema by check-jsonschema;
actionlint cannot be installed from the registry here) that build every backend and the sdist."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


def test_workflows_match_the_github_actions_schema():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                             "vendor.github-workflows", *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheels_workflow_builds_every_backend_and_the_sdist():
    workflow = yaml.safe_load((WORKFLOWS / "wheels.yml").read_text())
    jobs = workflow["jobs"]
    backends, runners = set(), set()
    for job in jobs.values():
        for step in job["steps"]:
            environment = (step.get("env") or {}).get("CIBW_ENVIRONMENT", "")
            backends.update(re.findall(r"SDCPP_BACKEND=(\w+)", environment))
        matrix = job.get("strategy", {}).get("matrix", {})
        runners.update(matrix.get("os", [job["runs-on"]] if "${{" not in job["runs-on"] else []))
    assert backends == {"cpu", "cuda", "vulkan", "metal"}
    assert {"ubuntu-24.04", "ubuntu-24.04-arm", "macos-14", "windows-2022"} <= runners
    assert any("--sdist" in step.get("run", "") for step in jobs["sdist"]["steps"])
