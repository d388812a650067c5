#!/usr/bin/env python3
"""Build the AArch64 guest programs into ELF images with zig cc (the `ziglang` PyPI package).

    python guests/build.py                 # rebuild every program into src/pvtime/images/
    python guests/build.py conformance     # just one
    python guests/build.py --out-dir DIR   # somewhere else
    python guests/build.py --check         # rebuild into a temp dir, compare with the shipped images

Importable: `build(name, out_dir) -> Path` and `PROGRAMS`.

The build is reproducible: the compiler runs in this directory on relative paths, with
-ffile-prefix-map, no debug info, no build id and no timestamps, so the bytes depend only on the
sources, these flags and the pinned compiler (ziglang 0.17.1), never on the checkout path.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

GUESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = GUESTS_DIR.parent
IMAGES_DIR = REPO_DIR / "src" / "pvtime" / "images"

#: Sources shared by every program (relative to guests/).
RUNTIME_SOURCES: tuple[str, ...] = ("runtime/start.S", "runtime/rt.c")

#: Program name -> its own sources (relative to guests/). The image is `<name>.elf`.
SOURCES: dict[str, tuple[str, ...]] = {
    "conformance": ("conformance.c",),
    "minikernel": ("minikernel.c",),
}

#: The programs, in build order.
PROGRAMS: tuple[str, ...] = tuple(SOURCES)

LINKER_SCRIPT = "link.ld"

CFLAGS: tuple[str, ...] = (
    "--target=aarch64-freestanding-none",
    "-mcpu=cortex_a72",
    "-ffreestanding",
    "-nostdlib",
    "-O2",
    "-std=c11",
    # The MMU is off: every data access is Device memory, which faults on unaligned accesses,
    # and no code may touch FP/SIMD registers (the exception entry does not save them).
    "-mstrict-align",
    "-mgeneral-regs-only",
    # zig hands clang the -mcpu feature list (which includes +v8a, implying FP and NEON) after
    # the features the -m flags above produce, undoing them: restate them last.
    *("-Xclang", "-target-feature", "-Xclang", "+strict-align"),
    *("-Xclang", "-target-feature", "-Xclang", "-fp-armv8"),
    *("-Xclang", "-target-feature", "-Xclang", "-neon"),
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-sanitize=all",
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-fno-common",
    "-g0",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Iruntime",
    "-static",
    "-Wl,--build-id=none",
    "-Wl,--no-dynamic-linker",
    "-Wl,-z,norelro",
    "-Wl,-z,noexecstack",
    "-Wl,-z,max-page-size=4096",
)


def zig_cc() -> list[str]:
    """The compiler command: `python -m ziglang cc` from the running interpreter."""
    try:
        import ziglang  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "building guests needs the 'ziglang' package: pip install 'pvtime[guests]'"
        ) from exc
    return [sys.executable, "-m", "ziglang", "cc"]


def command(name: str, out_path: Path) -> list[str]:
    """The full compiler command line that builds program `name` into `out_path`."""
    if name not in SOURCES:
        raise KeyError(f"unknown guest program {name!r}; known: {', '.join(PROGRAMS)}")
    return [
        *zig_cc(),
        *CFLAGS,
        f"-ffile-prefix-map={GUESTS_DIR}=guests",
        "-T",
        LINKER_SCRIPT,
        *RUNTIME_SOURCES,
        *SOURCES[name],
        "-o",
        str(out_path),
    ]


def build(name: str, out_dir: Path | str = IMAGES_DIR) -> Path:
    """Build program `name` into `out_dir/<name>.elf` and return that path."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{name}.elf"
    result = subprocess.run(
        command(name, out_path), cwd=GUESTS_DIR, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"building guest {name!r} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return out_path


def check(names: tuple[str, ...] = PROGRAMS, images_dir: Path = IMAGES_DIR) -> list[str]:
    """Rebuild `names` into a temporary directory; return those whose shipped image differs."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            built = build(name, tmp)
            shipped = Path(images_dir) / f"{name}.elf"
            if not shipped.exists() or not filecmp.cmp(built, shipped, shallow=False):
                stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("programs", nargs="*", help=f"programs to build (default: all of {', '.join(PROGRAMS)})")
    parser.add_argument("--out-dir", type=Path, default=IMAGES_DIR, help="where the .elf files go")
    parser.add_argument("--check", action="store_true", help="only verify the shipped images")
    args = parser.parse_args(argv)
    names = tuple(args.programs) or PROGRAMS
    for name in names:
        if name not in SOURCES:
            parser.error(f"unknown program {name!r}; known: {', '.join(PROGRAMS)}")
    if args.check:
        stale = check(names, args.out_dir)
        for name in stale:
            print(f"stale: {args.out_dir / (name + '.elf')} does not match its sources")
        return 1 if stale else 0
    for name in names:
        print(build(name, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
