#!/usr/bin/env python3
"""Build the native hooks of the unicorn CPU backend into shared objects with zig cc.

    python native/build.py                 # rebuild every hook for every host into src/pvtime/native/
    python native/build.py --out-dir DIR   # somewhere else
    python native/build.py --check         # rebuild into a temp dir, compare with the shipped files

Importable: `build(name, arch, out_dir) -> Path`, `HOOKS` and `ARCHES`.

Each hook is one C file built for each Linux host architecture pvtime runs on, into
`<name>.<arch>.so`, which `pvtime.cpu.unicorn.native` loads with ctypes. The shared objects need
nothing at run time, not even libc. The build is reproducible, as guests/build.py's is: the
compiler runs in this directory on relative paths, with -ffile-prefix-map, no debug info and no
build id, so the bytes depend only on the sources, these flags and the pinned compiler (ziglang
0.17.1), never on the checkout path.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

NATIVE_DIR = Path(__file__).resolve().parent
OUT_DIR = NATIVE_DIR.parent / "src" / "pvtime" / "native"

#: Hook name -> its C source (relative to native/). The shared object is `<name>.<arch>.so`.
HOOKS: dict[str, str] = {"block_counter": "block_counter.c", "sysreg_filter": "sysreg_filter.c",
                         "fast_traps": "fast_traps.c", "access_fault": "access_fault.c"}

#: Host architectures, as pvtime names them (platform.machine(), normalised): zig's target arch.
ARCHES: tuple[str, ...] = ("x86_64", "aarch64")

CFLAGS: tuple[str, ...] = (
    "-mcpu=baseline",
    "-O2",
    "-std=c11",
    "-ffreestanding",
    "-nostdlib",
    "-shared",
    "-fPIC",
    "-fvisibility=hidden",
    "-fomit-frame-pointer",
    "-fno-stack-protector",
    "-fno-sanitize=all",
    "-fno-unwind-tables",
    "-fno-asynchronous-unwind-tables",
    "-g0",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,-z,noexecstack",
)


def command(name: str, arch: str, out_path: Path) -> list[str]:
    """The full compiler command line that builds hook `name` for `arch` into `out_path`."""
    if name not in HOOKS or arch not in ARCHES:
        raise KeyError(f"unknown hook {name!r} or architecture {arch!r}; known: {', '.join(HOOKS)}; "
                       f"{', '.join(ARCHES)}")
    try:
        import ziglang  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("building native hooks needs the 'ziglang' package: pip install 'pvtime[guests]'") from exc
    return [sys.executable, "-m", "ziglang", "cc", f"--target={arch}-linux-musl", *CFLAGS,
            f"-ffile-prefix-map={NATIVE_DIR}=native", HOOKS[name], "-o", str(out_path)]


def build(name: str, arch: str, out_dir: Path | str = OUT_DIR) -> Path:
    """Build hook `name` for `arch` into `out_dir/<name>.<arch>.so` and return that path."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{name}.{arch}.so"
    result = subprocess.run(command(name, arch, out_path), cwd=NATIVE_DIR, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"building {name} for {arch} failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    return out_path


def targets() -> list[tuple[str, str]]:
    """Every (hook, architecture) pair, in build order."""
    return [(name, arch) for name in HOOKS for arch in ARCHES]


def stale(out_dir: Path = OUT_DIR) -> list[Path]:
    """Rebuild everything into a temporary directory; return the shipped files that differ."""
    with tempfile.TemporaryDirectory() as tmp:
        built = [build(name, arch, tmp) for name, arch in targets()]
        return [out_dir / b.name for b in built
                if not (out_dir / b.name).is_file() or (out_dir / b.name).read_bytes() != b.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the .so files go")
    parser.add_argument("--check", action="store_true", help="only verify the shipped files")
    args = parser.parse_args(argv)
    if args.check:
        differing = stale(args.out_dir)
        for path in differing:
            print(f"stale: {path} does not match its sources")
        return 1 if differing else 0
    for name, arch in targets():
        print(build(name, arch, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
