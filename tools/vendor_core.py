#!/usr/bin/env python3
"""Make sure vendor/stable-diffusion.cpp holds the pinned core sources.

Order of preference:
1. the git submodule is already checked out (a normal online clone);
2. `git submodule update --init --recursive` succeeds;
3. the sources are taken from the PyPI sdist of stable-diffusion-cpp-python==0.4.7,
   the one registry copy of exactly the pinned commit, downloaded with pip, checked
   against its sha256 and cached so a rebuild does not fetch again.

Whatever the route, the pin is proven by the git blob hashes of two core files.
Standard library only: this runs inside pip's isolated build environment.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PINNED_COMMIT = "90e87bc846f17059771efb8aaa31e9ef0cab6f78"
SDIST_REQUIREMENT = "stable-diffusion-cpp-python==0.4.7"
SDIST_NAME = "stable_diffusion_cpp_python-0.4.7.tar.gz"
SDIST_SHA256 = "998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282"
SDIST_VENDOR_PREFIX = "stable_diffusion_cpp_python-0.4.7/vendor/stable-diffusion.cpp/"
# git blob hashes at the pinned commit: they prove the sources are the pinned ones.
PINNED_BLOBS = {
    "src/stable-diffusion.cpp": "fd439ff1d6d355ee79378586d1aafda5a75a8e6b",
    "include/stable-diffusion.h": "c4c14949c4da554f24528ec1afff25c2b78adb8c",
}
REQUIRED_FILES = ("CMakeLists.txt", "ggml/CMakeLists.txt", *PINNED_BLOBS)
ORIGIN_MARKER = ".sdcpp-py-origin"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "vendor" / "stable-diffusion.cpp"


class VendorError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[sdcpp-py vendor] {message}", file=sys.stderr, flush=True)


def git_blob_hash(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_complete(dest: Path) -> bool:
    return all((dest / name).is_file() for name in REQUIRED_FILES)


def verify_pin(dest: Path) -> None:
    for name, expected in PINNED_BLOBS.items():
        actual = git_blob_hash(dest / name)
        if actual != expected:
            raise VendorError(
                f"{dest / name} has git blob {actual}, expected {expected}: the sources in {dest} "
                f"are not the pinned commit {PINNED_COMMIT}. Run "
                "`git submodule update --init --recursive`, or empty that folder to refill it."
            )


def cache_dir() -> Path:
    override = os.environ.get("SDCPP_PY_CACHE_DIR")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sdcpp-py"


def try_git_submodule(dest: Path) -> bool:
    if not (REPO_ROOT / ".gitmodules").is_file() or not (REPO_ROOT / ".git").exists():
        return False
    if shutil.which("git") is None:
        return False
    say("trying `git submodule update --init --recursive` ...")
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    try:
        result = subprocess.run(
            ["git", "submodule", "update", "--init", "--recursive", "--", str(dest.relative_to(REPO_ROOT))],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
    except (subprocess.TimeoutExpired, OSError) as exc:
        say(f"git submodule update did not finish: {exc}")
        return False
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        say(f"git submodule update failed: {last}")
        return False
    return is_complete(dest)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_sdist() -> Path:
    target = cache_dir() / SDIST_NAME
    if target.is_file() and sha256_of(target) == SDIST_SHA256:
        say(f"using cached {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    say(f"downloading the sdist of {SDIST_REQUIREMENT} with pip ...")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_REQUIREMENT.split("==")[0],
                   "--disable-pip-version-check", "--dest", tmp, SDIST_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True)
        downloaded = Path(tmp) / SDIST_NAME
        if result.returncode != 0 or not downloaded.is_file():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise VendorError(f"`{' '.join(command)}` failed:\n{tail}")
        actual = sha256_of(downloaded)
        if actual != SDIST_SHA256:
            raise VendorError(f"{SDIST_NAME} has sha256 {actual}, expected {SDIST_SHA256}; refusing to use it")
        os.replace(downloaded, target)
    return target


def extract_vendor_tree(sdist: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(SDIST_VENDOR_PREFIX):
                continue
            member.name = member.name[len(SDIST_VENDOR_PREFIX):]
            if member.name:
                members.append(member)
        # filter="data" refuses links and paths escaping dest (Python >= 3.11.4).
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(dest, members=members, **extra)


def ensure_vendor(dest: Path, allow_git: bool = True) -> str:
    if is_complete(dest):
        verify_pin(dest)
        return "present"
    if allow_git and try_git_submodule(dest):
        verify_pin(dest)
        return "git submodule"
    if dest.exists() and any(dest.iterdir()):
        raise VendorError(
            f"{dest} is neither empty nor complete; remove its contents and retry, or run "
            "`git submodule update --init --recursive`"
        )
    sdist = fetch_sdist()
    extract_vendor_tree(sdist, dest)
    if not is_complete(dest):
        raise VendorError(f"{sdist} did not contain the expected {SDIST_VENDOR_PREFIX} tree")
    verify_pin(dest)
    (dest / ORIGIN_MARKER).write_text(
        f"Filled from the PyPI sdist {SDIST_REQUIREMENT} (sha256 {SDIST_SHA256}),\n"
        f"pin {PINNED_COMMIT} proven by git blob hashes.\n"
    )
    say(f"the submodule could not be cloned: filled {dest} from the PyPI sdist {SDIST_REQUIREMENT} "
        f"(sha256 verified, pin {PINNED_COMMIT[:8]} proven by git blob hashes)")
    return "pypi sdist"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--no-git", action="store_true", help="skip the git submodule attempt")
    args = parser.parse_args(argv)
    try:
        origin = ensure_vendor(args.dest.resolve(), allow_git=not args.no_git)
    except VendorError as exc:
        say(f"error: {exc}")
        say("to fix: run `git submodule update --init --recursive` in a clone with network access, or make "
            f"the PyPI sdist {SDIST_REQUIREMENT} downloadable by pip (or place it in {cache_dir()}).")
        return 1
    say(f"core sources ready ({origin}) at {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
