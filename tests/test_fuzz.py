"""A small fixed-seed run of tools/fuzz.py (issue 17): malformed component files, generated LoRA files, random
generation keywords and random call sequences across threads never crash or hang the interpreter.

Each mutant and sequence runs in a child process of the fuzzer, so a crash is counted, not fatal to pytest.
Longer campaigns: `python tools/fuzz.py components --mutants 20000 --jobs 2` (see the tool's docstring).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The fuzzer forks a child per mutant from a server process: Linux only (no fork on Windows; macOS forks of
# processes that loaded its frameworks are not safe).
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tools/fuzz.py forks: Linux only")

FUZZ = Path(__file__).resolve().parent.parent / "tools" / "fuzz.py"


def run_fuzz(out: Path, seed_dir: Path, *args: str) -> dict:
    command = [sys.executable, str(FUZZ), *args, "--out", str(out), "--seed-dir", str(seed_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    summary_files = list(out.glob("summary-*.json"))
    assert summary_files, f"the fuzzer wrote no summary:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    summary = json.loads(summary_files[0].read_text())
    summary["report"] = result.stdout
    return summary


def failures(summary: dict) -> str:
    return "\n".join(f"{r['outcome']} {r.get('signal', '')} stage={r.get('stage')} {r.get('error') or ''} "
                     f"{r.get('notes') or ''} "
                     f"{r.get('in_flight') or ''} {r.get('core_line') or ''} replay: {r.get('saved')}"
                     for r in summary["bad"]) + "\n" + summary["report"][-4000:]


def test_two_hundred_component_mutants_neither_crash_nor_hang(tmp_path, flux_parts, flux_gguf_dit):
    summary = run_fuzz(tmp_path, flux_parts["diffusion_model"].parent, "components", "--mutants", "200",
                       "--seed", "17", "--jobs", "2", "--timeout", "30")
    assert summary["tried"] == 200
    assert summary["counts"]["refused"] > 0 and summary["counts"]["ok"] > 0  # the mutants reach both ends
    assert summary["counts"]["crash"] == 0 and summary["counts"]["hang"] == 0, failures(summary)
    assert summary["counts"]["fuzzer_error"] == 0, failures(summary)


def test_ten_call_sequences_across_threads_neither_crash_nor_hang(tmp_path, flux_parts):
    summary = run_fuzz(tmp_path, flux_parts["diffusion_model"].parent, "calls", "--sequences", "10",
                       "--seed", "17", "--jobs", "2", "--timeout", "30")
    assert summary["tried"] == 10
    assert summary["counts"]["crash"] == 0 and summary["counts"]["hang"] == 0, failures(summary)
    assert summary["counts"]["fuzzer_error"] == 0, failures(summary)


def test_sixty_generated_loras_neither_crash_nor_hang_nor_break_the_context(tmp_path, flux_parts, flux_gguf_dit):
    # LoRA files of every kind the core applies, well formed and not, in 1-3 calls at run time or merged: a
    # refusal must be an exception of a documented type, and the context must make a plain image after it.
    summary = run_fuzz(tmp_path, flux_parts["diffusion_model"].parent, "loras", "--cases", "60",
                       "--seed", "17", "--jobs", "2", "--timeout", "60")
    assert summary["tried"] == 60
    assert summary["counts"]["refused"] > 0 and summary["counts"]["ok"] > 0  # the cases reach both ends
    for outcome in ("crash", "hang", "broken", "fuzzer_error"):
        assert summary["counts"][outcome] == 0, failures(summary)
    assert not summary["undocumented_exceptions"], summary["undocumented_exceptions"]


def test_sixty_calls_of_random_keywords_neither_crash_nor_hang_nor_break_the_context(tmp_path, flux_parts):
    # Keywords from the option tables, mostly valid and at their edges (one-step schedules, huge finite floats,
    # images in every layout), one bad keyword in some calls: an accepted call returns its images at the size
    # asked for ("wrong" otherwise), a refused one raises a documented type and leaves the context usable.
    summary = run_fuzz(tmp_path, flux_parts["diffusion_model"].parent, "params", "--cases", "60",
                       "--seed", "17", "--jobs", "2", "--timeout", "90")
    assert summary["tried"] == 60
    assert summary["counts"]["refused"] > 0 and summary["counts"]["ok"] > 0
    for outcome in ("crash", "hang", "broken", "wrong", "fuzzer_error"):
        assert summary["counts"][outcome] == 0, failures(summary)
    assert not summary["undocumented_exceptions"], summary["undocumented_exceptions"]
