"""Check a built wheel: its extension links only the system libraries every Linux has (as auditwheel reports
them), so nothing the build machine happened to have leaks in. Prints auditwheel's verdict too."""

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


def needed_libraries(wheel: str) -> dict[str, list[str]]:
    found = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if ".so" not in name.rsplit("/", 1)[-1]:
                continue
            elf = ELFFile(io.BytesIO(archive.read(name)))
            needed = []
            for section in elf.iter_sections():
                if isinstance(section, DynamicSection):
                    needed += [tag.needed for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
            found[name] = needed
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wheel")
    args = parser.parse_args(argv)
    libraries = needed_libraries(args.wheel)
    if not libraries:
        print(f"{args.wheel}: no shared object inside", file=sys.stderr)
        return 1
    unexpected = {so: [lib for lib in needed if not lib.startswith(EXPECTED)] for so, needed in libraries.items()}
    for so, needed in libraries.items():
        print(f"{so}: {', '.join(needed)}")
    subprocess.run([sys.executable, "-m", "auditwheel", "show", args.wheel], check=False)
    bad = {so: libs for so, libs in unexpected.items() if libs}
    if bad:
        print(f"unexpected external libraries: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
