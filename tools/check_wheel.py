"""Check a built wheel: its extension links only the system libraries every Linux has (as auditwheel reports
them) and libraries the wheel itself carries (the portable CPU wheel's ggml, found through $ORIGIN), so nothing
the build machine happened to have leaks in. Prints auditwheel's verdict too.

Also: the wheel is typed (py.typed and _core.pyi), and says whether it carries sdcpp_py._test_hooks, the test
suite's hooks (source builds have it; --release requires a wheel built with SDCPP_PY_TESTING=OFF)."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

# glibc, the C++ runtime and OpenMP (ggml's CPU threads): what auditwheel treats as system-provided.
EXPECTED = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux", "libgcc_s.so",
            "libstdc++.so", "libgomp.so")


def needed_libraries(wheel: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per shared object in the wheel: (its DT_NEEDED entries, its DT_RUNPATH/DT_RPATH entries)."""
    found, search = {}, {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if ".so" not in name.rsplit("/", 1)[-1]:
                continue
            elf = ELFFile(io.BytesIO(archive.read(name)))
            needed, paths = [], []
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    for tag in section.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)
                        elif tag.entry.d_tag == "DT_RUNPATH":
                            paths += tag.runpath.split(":")
                        elif tag.entry.d_tag == "DT_RPATH":
                            paths += tag.rpath.split(":")
            found[name], search[name] = needed, [p for p in paths if p]
    return found, search


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wheel")
    parser.add_argument("--release", action="store_true",
                        help="a release wheel: fail if it carries the test hooks (sdcpp_py._test_hooks)")
    args = parser.parse_args(argv)
    with zipfile.ZipFile(args.wheel) as archive:
        names = archive.namelist()
    missing = [name for name in ("sdcpp_py/py.typed", "sdcpp_py/_core.pyi") if name not in names]
    if missing:
        print(f"{args.wheel}: not typed, missing {missing}", file=sys.stderr)
        return 1
    hooks = [name for name in names if name.rsplit("/", 1)[-1].startswith("_test_hooks")]
    print(f"test hooks (sdcpp_py._test_hooks): {', '.join(hooks) if hooks else 'none (SDCPP_PY_TESTING=OFF)'}")
    if hooks and args.release:
        print(f"{args.wheel}: a release wheel must not carry the test hooks: build with SDCPP_PY_TESTING=OFF",
              file=sys.stderr)
        return 1
    libraries, search_paths = needed_libraries(args.wheel)
    if not libraries:
        print(f"{args.wheel}: no shared object inside", file=sys.stderr)
        return 1
    folder_of = {so.rsplit("/", 1)[-1]: so.rsplit("/", 1)[0] for so in libraries}
    unexpected, unreachable = {}, {}
    for so, needed in libraries.items():
        print(f"{so}: {', '.join(needed)}" + (f" (runpath {':'.join(search_paths[so])})" if search_paths[so] else ""))
        unexpected[so] = [lib for lib in needed if not lib.startswith(EXPECTED) and lib not in folder_of]
        # A library the wheel carries is found only beside the one needing it, through $ORIGIN.
        unreachable[so] = [lib for lib in needed if lib in folder_of and
                           (folder_of[lib] != so.rsplit("/", 1)[0] or "$ORIGIN" not in search_paths[so])]
    subprocess.run([sys.executable, "-m", "auditwheel", "show", args.wheel], check=False)
    bad = {so: libs for so, libs in unexpected.items() if libs}
    if bad:
        print(f"unexpected external libraries: {bad}", file=sys.stderr)
        return 1
    bad = {so: libs for so, libs in unreachable.items() if libs}
    if bad:
        print(f"bundled libraries not reachable through $ORIGIN: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
