"""tools/patch_core.py: our patches reach the compiled mirror, never the vendored files."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "patch_core.py"

PATCH = """Why: a test patch.

diff --git a/src/a.txt b/src/a.txt
--- a/src/a.txt
+++ b/src/a.txt
@@ -1,2 +1,2 @@
 one
-two
+TWO
"""


def run_tool(core: Path, patches: Path, dest: Path):
    return subprocess.run([sys.executable, str(TOOL), "--core", str(core), "--patches", str(patches),
                           "--dest", str(dest), "--commit", "abc"], capture_output=True, text=True)


def make_core(tmp_path: Path) -> Path:
    core = tmp_path / "core"
    (core / "src").mkdir(parents=True)
    (core / "src" / "a.txt").write_text("one\ntwo\n")
    (core / "src" / "b.txt").write_text("untouched\n")
    return core


def test_patch_applies_to_the_mirror_only(tmp_path):
    core, patches, dest = make_core(tmp_path), tmp_path / "patches", tmp_path / "build" / "core-src"
    patches.mkdir()
    (patches / "0001-test.patch").write_text(PATCH)
    result = run_tool(core, patches, dest)
    assert result.returncode == 0, result.stderr
    assert (dest / "src" / "a.txt").read_text() == "one\nTWO\n"
    assert (core / "src" / "a.txt").read_text() == "one\ntwo\n", "the vendored file was edited"
    assert (dest / "src" / "b.txt").read_text() == "untouched\n"

    # Unchanged inputs: the mirror is kept as is; a changed patch rebuilds it.
    marker = dest / "kept"
    marker.write_text("")
    assert run_tool(core, patches, dest).returncode == 0 and marker.exists()
    (patches / "0001-test.patch").write_text(PATCH.replace("+TWO", "+2"))
    assert run_tool(core, patches, dest).returncode == 0
    assert not marker.exists() and (dest / "src" / "a.txt").read_text() == "one\n2\n"


def test_a_patch_that_does_not_apply_fails_the_build_with_its_name(tmp_path):
    core, patches, dest = make_core(tmp_path), tmp_path / "patches", tmp_path / "build" / "core-src"
    patches.mkdir()
    (patches / "0002-stale.patch").write_text(PATCH.replace(" one\n", " zero\n"))
    result = run_tool(core, patches, dest)
    assert result.returncode == 1
    assert "0002-stale.patch does not apply" in result.stderr
    assert not dest.exists()


def test_every_patch_in_the_repo_applies_to_the_pinned_core(tmp_path):
    core = REPO_ROOT / "vendor" / "stable-diffusion.cpp"
    result = run_tool(core, REPO_ROOT / "patches", tmp_path / "core-src")
    assert result.returncode == 0, result.stderr
    patched = (tmp_path / "core-src" / "include" / "stable-diffusion.h").read_text()
    assert "sd_set_abort_callback" in patched
    assert "sd_set_abort_callback" not in (core / "include" / "stable-diffusion.h").read_text()
