#!/usr/bin/env python3
"""Build the AArch64 guest programs with zig cc (the `ziglang` PyPI package): each as an ELF
(`<name>.elf`, linked at 0x40200000, for QEMU -kernel and pvtime) and as an arm64 Image
(`<name>.img`: the same bytes, flat, with the boot header, for kvmtool, Firecracker, crosvm).

    python guests/build.py                 # rebuild every program into src/pvtime/images/
    python guests/build.py conformance     # just one
    python guests/build.py --out-dir DIR   # somewhere else
    python guests/build.py --check         # rebuild into a temp dir, compare with the shipped images

Importable: `build(name, out_dir) -> Path` (the ELF; the Image beside it), `image_bytes` and
`PROGRAMS`.

The Image must run wherever a loader puts it (2 MiB-aligned base + text_offset 0: 0x40000000
under QEMU, 0x80000000 under kvmtool and Firecracker), so the code holds no absolute address:
`build` links each program a second time at `CHECK_LINK_BASE` and refuses the build if the two
Images differ in any byte (naming the symbols where they do).

The build is reproducible: the compiler runs in this directory on relative paths, with
-ffile-prefix-map, no debug info, no build id and no timestamps, so the bytes depend only on the
sources, these flags and the pinned compiler (ziglang 0.17.1), never on the checkout path.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

GUESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = GUESTS_DIR.parent
IMAGES_DIR = REPO_DIR / "src" / "pvtime" / "images"

#: Sources shared by every program (relative to guests/).
RUNTIME_SOURCES: tuple[str, ...] = (
    "runtime/start.S", "runtime/rt.c", "runtime/fdt.c", "runtime/platform.c", "runtime/gic.c",
)

#: Program name -> its own sources (relative to guests/). The image is `<name>.elf`.
SOURCES: dict[str, tuple[str, ...]] = {
    "conformance": ("conformance.c",),
    "minikernel": ("minikernel.c",),
}

#: The programs, in build order.
PROGRAMS: tuple[str, ...] = tuple(SOURCES)

LINKER_SCRIPT = "link.ld"
#: The second link address of the position-independence check (kvmtool's RAM base + 2 MiB).
CHECK_LINK_BASE = 0x8020_0000
ELF_SUFFIX = ".elf"
IMAGE_SUFFIX = ".img"

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


def command(name: str, out_path: Path, linker_script: str = LINKER_SCRIPT) -> list[str]:
    """The full compiler command line that builds program `name` into `out_path`."""
    if name not in SOURCES:
        raise KeyError(f"unknown guest program {name!r}; known: {', '.join(PROGRAMS)}")
    return [
        *zig_cc(),
        *CFLAGS,
        f"-ffile-prefix-map={GUESTS_DIR}=guests",
        "-T",
        linker_script,
        *RUNTIME_SOURCES,
        *SOURCES[name],
        "-o",
        str(out_path),
    ]


def _compile(name: str, out_path: Path, linker_script: str = LINKER_SCRIPT) -> None:
    result = subprocess.run(
        command(name, out_path, linker_script), cwd=GUESTS_DIR, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"building guest {name!r} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )


def _load_segments(elf: bytes) -> list[tuple[int, int, int, int]]:
    """(p_paddr, p_offset, p_filesz, p_memsz) of each PT_LOAD segment of a little-endian ELF64."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    out = []
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", elf, phoff + i * phentsize)
        if p_type == 1 and memsz:  # PT_LOAD
            out.append((paddr, offset, filesz, memsz))
    return sorted(out)


def image_bytes(elf: bytes) -> bytes:
    """The arm64 Image of a guest ELF: its loaded bytes from the first segment to the end of the
    last one's file bytes, gaps zero-filled (the header at the start is the image's own)."""
    segments = _load_segments(elf)
    if not segments:
        raise ValueError("no PT_LOAD segment")
    base = segments[0][0]
    end = max(paddr + filesz for paddr, _, filesz, _ in segments)
    out = bytearray(end - base)
    for paddr, offset, filesz, _ in segments:
        out[paddr - base:paddr - base + filesz] = elf[offset:offset + filesz]
    if out[0x38:0x3C] != b"ARM\x64":
        raise ValueError("the image does not start with an arm64 Image header (magic at 0x38)")
    return bytes(out)


def _symbols_near(elf: bytes, offsets: list[int]) -> list[str]:
    """`symbol+off` for image offsets, from the ELF's symbol table (for the error message)."""
    from elftools.elf.elffile import ELFFile  # pvtime's own dependency
    import io

    f = ELFFile(io.BytesIO(elf))
    base = _load_segments(elf)[0][0]
    syms = sorted((s["st_value"], s.name) for s in f.get_section_by_name(".symtab").iter_symbols()
                  if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"))
    out = []
    for off in offsets:
        addr = base + off
        best = max(((v, n) for v, n in syms if v <= addr), default=(base, "?"))
        out.append(f"{best[1]}+{addr - best[0]:#x} (image offset {off:#x})")
    return out


def check_position_independent(name: str, image: bytes, tmp: Path) -> None:
    """Link `name` again at CHECK_LINK_BASE and compare: RuntimeError naming the places where the
    Image holds an absolute address (a pointer in initialized data, a lookup table of pointers)."""
    wrapper = tmp / "link-elsewhere.ld"
    wrapper.write_text(f"RT_LINK_BASE = {CHECK_LINK_BASE:#x};\nINCLUDE {LINKER_SCRIPT}\n")
    elsewhere = tmp / f"{name}-elsewhere{ELF_SUFFIX}"
    _compile(name, elsewhere, str(wrapper))
    moved = elsewhere.read_bytes()
    other = image_bytes(moved)
    if other == image:
        return
    diffs = [i for i in range(min(len(image), len(other))) if image[i] != other[i]]
    words = sorted({i & ~7 for i in diffs})[:8]
    raise RuntimeError(
        f"guest {name!r} is not position-independent: linked at {CHECK_LINK_BASE:#x} its Image "
        f"differs in {len(diffs)} bytes, at " + ", ".join(_symbols_near(moved, words))
        + ": use no pointer in initialized data (use char arrays, or compute addresses in code)")


def build(name: str, out_dir: Path | str = IMAGES_DIR) -> Path:
    """Build program `name` into `out_dir/<name>.elf` and `out_dir/<name>.img`; return the ELF's path."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{name}{ELF_SUFFIX}"
    with tempfile.TemporaryDirectory() as tmp:
        elf = Path(tmp) / out_path.name
        _compile(name, elf)
        image = image_bytes(elf.read_bytes())
        check_position_independent(name, image, Path(tmp))
        shutil.copy(elf, out_path)
    (out_dir / f"{name}{IMAGE_SUFFIX}").write_bytes(image)
    return out_path


def check(names: tuple[str, ...] = PROGRAMS, images_dir: Path = IMAGES_DIR) -> list[str]:
    """Rebuild `names` into a temporary directory; return those whose shipped ELF or Image differs."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            build(name, tmp)
            for suffix in (ELF_SUFFIX, IMAGE_SUFFIX):
                shipped = Path(images_dir) / f"{name}{suffix}"
                built = Path(tmp) / f"{name}{suffix}"
                if not shipped.exists() or not filecmp.cmp(built, shipped, shallow=False):
                    stale.append(name)
                    break
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("programs", nargs="*", help=f"programs to build (default: all of {', '.join(PROGRAMS)})")
    parser.add_argument("--out-dir", type=Path, default=IMAGES_DIR, help="where the .elf and .img files go")
    parser.add_argument("--check", action="store_true", help="only verify the shipped images")
    args = parser.parse_args(argv)
    names = tuple(args.programs) or PROGRAMS
    for name in names:
        if name not in SOURCES:
            parser.error(f"unknown program {name!r}; known: {', '.join(PROGRAMS)}")
    if args.check:
        stale = check(names, args.out_dir)
        for name in stale:
            print(f"stale: {args.out_dir / name}.{{elf,img}} do not match its sources")
        return 1 if stale else 0
    for name in names:
        print(build(name, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
