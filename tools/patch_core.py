#!/usr/bin/env python3
"""Build-time copy of the vendored core with our patches applied.

The vendored sources are never edited. The build compiles a mirror of them instead: every file is a
hard link (a copy where links are impossible) except the files our patches touch, which are real copies
with the patches applied by `git apply` (or `patch -p1` where git is missing). The mirror is rebuilt only
when the pinned commit or a patch changes. Exit status 1 with a message when a patch does not apply.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STAMP_NAME = ".sdcpp-py-patched"
MIRROR_FORMAT = "1"  # bump when the mirror layout changes


def say(message: str) -> None:
    print(f"[sdcpp-py patch] {message}", file=sys.stderr)


def patched_paths(patch: Path) -> list[str]:
    return re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(encoding="utf-8"), flags=re.MULTILINE)


def stamp_for(commit: str, patches: list[Path]) -> str:
    digest = hashlib.sha256(f"{MIRROR_FORMAT}\n{commit}\n".encode())
    for patch in patches:
        digest.update(patch.name.encode() + b"\n" + patch.read_bytes())
    return digest.hexdigest()


def mirror_tree(source: Path, dest: Path) -> None:
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if d != ".git"]
        target_root = dest / Path(root).relative_to(source)
        target_root.mkdir(parents=True, exist_ok=True)
        for name in files:
            src, dst = Path(root) / name, target_root / name
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def apply_patch(patch: Path, tree: Path) -> None:
    git = shutil.which("git")
    if git:
        # The ceiling keeps git from treating our own checkout (around the build dir) as the repository.
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
        command = [git, "apply", "--whitespace=nowarn", str(patch)]
    else:
        env = None
        command = ["patch", "-p1", "--forward", "--batch", "-i", str(patch)]
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{patch.name} does not apply to the pinned core:\n{result.stdout}{result.stderr}")


def build_mirror(core: Path, patches_dir: Path, dest: Path, commit: str) -> Path:
    patches = sorted(patches_dir.glob("*.patch"))
    stamp = stamp_for(commit, patches)
    stamp_file = dest / STAMP_NAME
    if stamp_file.is_file() and stamp_file.read_text().strip() == stamp:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    staging = dest.with_name(dest.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    mirror_tree(core, staging)
    for patch in patches:
        for relative in patched_paths(patch):
            target = staging / relative
            if target.exists():
                # Break the hard link: the patch must never reach the vendored file.
                data = target.read_bytes()
                target.unlink()
                target.write_bytes(data)
        apply_patch(patch.resolve(), staging)
        say(f"applied {patch.name} ({', '.join(patched_paths(patch))})")
    (staging / STAMP_NAME).write_text(stamp + "\n")
    staging.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--core", type=Path, required=True, help="the vendored stable-diffusion.cpp")
    parser.add_argument("--patches", type=Path, required=True, help="folder of *.patch files, applied in name order")
    parser.add_argument("--dest", type=Path, required=True, help="where the patched mirror goes")
    parser.add_argument("--commit", required=True, help="the pinned core commit (part of the rebuild stamp)")
    args = parser.parse_args(argv)
    try:
        build_mirror(args.core.resolve(), args.patches.resolve(), args.dest.resolve(), args.commit)
    except (OSError, RuntimeError) as error:
        say(str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
