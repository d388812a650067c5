#!/usr/bin/env python3
"""Build pvtime's Linux guest: an arm64 kernel from Debian's pinned source package, and its initramfs.

    python guests/linux/build.py                    # kernel + initramfs -> src/pvtime/images/linux/
    python guests/linux/build.py --initramfs-only   # just /init and the cpio (seconds)
    python guests/linux/build.py --work-dir DIR     # keep the kernel tree in DIR and reuse it
    python guests/linux/build.py --out-dir DIR      # write the files somewhere else
    python guests/linux/build.py --check            # rebuild everything in a temp dir, compare

Needs Debian 12 (bookworm) with the packages of `APT_INSTALL` at the pinned versions, and the
`ziglang` PyPI package (pvtime's `guests` extra) for /init.

Kernel: `make ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- tinyconfig`, the fragment
`pvtime.config` merged with scripts/kconfig/merge_config.sh, `olddefconfig`, `make Image`. The
KBUILD_BUILD_* values and LOCALVERSION are pinned, the build runs in-tree on relative paths
without debug info, so the Image depends only on the source, the fragment and the toolchain.

Initramfs: `init.c` built static with zig cc for aarch64-linux-musl (as guests/build.py builds
the bare-metal guests: relative paths, -ffile-prefix-map, no build id), packed as /init into a
newc cpio written here (sorted, mtimes 0, uid/gid 0) and gzipped with mtime 0.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LINUX_DIR = Path(__file__).resolve().parent
REPO_DIR = LINUX_DIR.parents[1]
OUT_DIR = REPO_DIR / "src" / "pvtime" / "images" / "linux"

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_VERSION = "6.1.176-1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_TREE = "linux-source-6.1"  # the tarball's top directory

#: Debian packages whose exact versions determine the Image bytes.
PINNED_PACKAGES: dict[str, str] = {
    SOURCE_PACKAGE: SOURCE_VERSION,
    "gcc-aarch64-linux-gnu": "4:12.2.0-3",
    "gcc-12-aarch64-linux-gnu": "12.2.0-14cross1",
    "binutils-aarch64-linux-gnu": "2.40-2",
}
#: Host tools the kernel build runs (their versions do not reach the Image).
HOST_PACKAGES: tuple[str, ...] = ("make", "gcc", "libc6-dev", "bc", "bison", "flex", "xz-utils", "gzip")
APT_INSTALL = "apt-get install -y --no-install-recommends " + " ".join(
    [f"{name}={version}" for name, version in PINNED_PACKAGES.items()] + list(HOST_PACKAGES)
)

FRAGMENT = LINUX_DIR / "pvtime.config"
ARCH = "arm64"
CROSS_COMPILE = "aarch64-linux-gnu-"

#: Pinned build identity (init/Makefile, scripts/mkcompile_h). The timestamp is the pinned
#: package's Debian changelog date.
KBUILD: dict[str, str] = {
    "KBUILD_BUILD_TIMESTAMP": "Thu, 02 Jul 2026 15:50:42 +0200",
    "KBUILD_BUILD_USER": "pvtime",
    "KBUILD_BUILD_HOST": "pvtime",
    "KBUILD_BUILD_VERSION": "1",
}

INIT_SOURCE = "init.c"
INIT_CFLAGS: tuple[str, ...] = (
    "-target", "aarch64-linux-musl",
    "-static",
    "-Os",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-g0",
    "-s",
    "-Wl,--build-id=none",
)

#: The shipped files that the build writes (the README beside them is written by hand).
KERNEL_FILE = "Image.gz"
INITRAMFS_FILE = "initramfs.cpio.gz"
MANIFEST_FILE = "manifest.json"
LICENSE_FILES: dict[str, str] = {  # shipped name -> where it comes from
    "COPYING": "kernel:COPYING",
    "LICENSES/preferred/GPL-2.0": "kernel:LICENSES/preferred/GPL-2.0",
    "LICENSES/exceptions/Linux-syscall-note": "kernel:LICENSES/exceptions/Linux-syscall-note",
    "musl-COPYRIGHT": "zig:lib/libc/musl/COPYRIGHT",  # /init links musl statically
}
BUILT_FILES: tuple[str, ...] = (KERNEL_FILE, INITRAMFS_FILE, MANIFEST_FILE, *LICENSE_FILES)

# newc cpio (the format the kernel unpacks: Documentation/driver-api/early-userspace/buffer-format.rst)
S_IFDIR, S_IFREG, S_IFCHR = 0o040000, 0o100000, 0o020000


class BuildError(RuntimeError):
    """A build step failed or a prerequisite is missing; the message says which and what to do."""


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive: a directory, a regular file or a character device."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def newc_archive(entries: list[CpioEntry]) -> bytes:
    """A newc cpio of `entries` sorted by name, inodes numbered from 1, owner 0, mtime 0."""
    out = io.BytesIO()

    def member(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int], nlink: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))

    for ino, entry in enumerate(sorted(entries, key=lambda e: e.name), start=1):
        nlink = 2 if entry.mode & 0o170000 == S_IFDIR else 1
        member(ino, entry.name, entry.mode, entry.data, entry.rdev, nlink)
    member(0, "TRAILER!!!", 0, b"", (0, 0), 1)
    return out.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """`data` gzipped at level 9 with no name and mtime 0 (the same bytes on every run)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(data)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, what: str = "") -> str:
    """Run `cmd`; its stdout, or BuildError with its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise BuildError(f"{what or cmd[0]} failed ({result.returncode}) in {cwd}:\n{tail}")
    return result.stdout


# --- prerequisites ------------------------------------------------------------------------------

def installed_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
                            capture_output=True, text=True, check=False)
    status, _, version = result.stdout.partition("\t")
    return version if result.returncode == 0 and status.endswith(" installed") else None


def check_packages() -> None:
    """BuildError unless every pinned package is installed at its pinned version."""
    if shutil.which("dpkg-query") is None:
        raise BuildError(f"building the kernel needs Debian 12 with: {APT_INSTALL}")
    wrong = []
    for name, version in PINNED_PACKAGES.items():
        have = installed_version(name)
        if have != version:
            wrong.append(f"{name} {have or 'not installed'} (want {version})")
    missing = [name for name in HOST_PACKAGES if installed_version(name) is None]
    if wrong or missing:
        raise BuildError("packages not as pinned: " + "; ".join(wrong + [f"{m} not installed" for m in missing])
                         + f"\nas root: apt-get update && {APT_INSTALL}")
    if not SOURCE_TARBALL.is_file():
        raise BuildError(f"{SOURCE_TARBALL} is missing although {SOURCE_PACKAGE} is installed")


def zig_cc() -> list[str]:
    """`python -m ziglang cc` from the running interpreter."""
    try:
        import ziglang  # noqa: F401
    except ImportError as exc:
        raise BuildError("building /init needs the 'ziglang' package: pip install 'pvtime[guests]'") from exc
    return [sys.executable, "-m", "ziglang", "cc"]


def zig_version() -> str:
    return run([sys.executable, "-m", "ziglang", "version"], LINUX_DIR, what="zig version").strip()


def zig_lib_file(relative: str) -> Path:
    import ziglang

    return Path(ziglang.__file__).parent / relative


# --- config -------------------------------------------------------------------------------------

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig lines -> {option: value}, `# CONFIG_X is not set` as "n"."""
    options = {}
    for line in text.splitlines():
        if m := _SET.match(line.strip()):
            options[m[1]] = m[2]
        elif m := _UNSET.match(line.strip()):
            options[m[1]] = "n"
    return options


def config_mismatches(fragment: dict[str, str], config: dict[str, str]) -> list[str]:
    """The fragment's options that `config` does not have as the fragment says."""
    return [f"{k}: fragment {v}, config {config.get(k, 'n (absent)')}"
            for k, v in fragment.items() if config.get(k, "n") != v]


# --- kernel -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kernel:
    """A built kernel: the raw Image and what identifies it."""

    image: bytes
    release: str  # uname -r
    banner: str  # /proc/version's "Linux version ..." line, as in the Image
    config: str  # the full .config (also embedded in the Image)
    tree: Path


def kernel_env() -> dict[str, str]:
    return {**os.environ, **KBUILD, "ARCH": ARCH, "CROSS_COMPILE": CROSS_COMPILE, "LOCALVERSION": "",
            "LC_ALL": "C", "TZ": "UTC"}


def prepare_tree(work_dir: Path) -> Path:
    """Unpack the source tarball into `work_dir` (kept if already there from this tarball)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    tree = work_dir / SOURCE_TREE
    stamp = work_dir / ".pvtime-source"
    want = f"{SOURCE_PACKAGE} {SOURCE_VERSION}\n"
    if tree.is_dir() and stamp.is_file() and stamp.read_text() == want:
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    stamp.unlink(missing_ok=True)
    print(f"unpacking {SOURCE_TARBALL} into {work_dir}", flush=True)
    run(["tar", "-xf", str(SOURCE_TARBALL)], work_dir, what="tar")
    stamp.write_text(want)
    return tree


def configure(tree: Path) -> str:
    """tinyconfig + the fragment + olddefconfig; the .config, checked against the fragment."""
    env = kernel_env()
    run(["make", "tinyconfig"], tree, env, "make tinyconfig")
    run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)], tree, env, "merge_config.sh")
    run(["make", "olddefconfig"], tree, env, "make olddefconfig")
    config = (tree / ".config").read_text()
    bad = config_mismatches(parse_config(FRAGMENT.read_text()), parse_config(config))
    if bad:
        raise BuildError(f"{FRAGMENT.name} options that Kconfig did not keep:\n  " + "\n  ".join(bad))
    return config


def build_kernel(work_dir: Path, jobs: int) -> Kernel:
    """Configure and build `Image` in `work_dir`."""
    tree = prepare_tree(work_dir)
    config = configure(tree)
    print(f"building Image in {tree} (-j{jobs})", flush=True)
    run(["make", f"-j{jobs}", "Image"], tree, kernel_env(), "make Image")
    image = (tree / "arch" / "arm64" / "boot" / "Image").read_bytes()
    release = run(["make", "-s", "kernelrelease"], tree, kernel_env(), "make kernelrelease").strip()
    return Kernel(image, release, image_banner(image), config, tree)


def image_banner(image: bytes) -> str:
    """The `Linux version ...` line inside an Image (init/version-timestamp.c: linux_banner)."""
    start = image.find(b"Linux version ")
    if start < 0:
        raise BuildError("no 'Linux version' banner in the Image")
    return image[start:image.index(b"\n", start)].decode()


# --- initramfs ----------------------------------------------------------------------------------

def build_init(out_path: Path) -> bytes:
    """Compile /init (static aarch64 musl) to `out_path`; its bytes."""
    cmd = [*zig_cc(), *INIT_CFLAGS, f"-ffile-prefix-map={LINUX_DIR}=guests/linux", INIT_SOURCE, "-o", str(out_path)]
    run(cmd, LINUX_DIR, what="zig cc init.c")
    return out_path.read_bytes()


def initramfs_entries(init: bytes) -> list[CpioEntry]:
    """/dev/console (the kernel opens it before running /init), /proc to mount on, and /init."""
    return [
        CpioEntry("dev", S_IFDIR | 0o755),
        CpioEntry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("init", S_IFREG | 0o755, init),
        CpioEntry("proc", S_IFDIR | 0o755),
    ]


# --- outputs ------------------------------------------------------------------------------------

def license_bytes(tree: Path) -> dict[str, bytes]:
    """The license files to ship: the kernel's from its source tree, musl's from zig's copy."""
    out = {}
    for name, origin in LICENSE_FILES.items():
        kind, _, path = origin.partition(":")
        out[name] = (zig_lib_file(path) if kind == "zig" else tree / path).read_bytes()
    return out


def compiler_versions() -> dict[str, str]:
    gcc = run([f"{CROSS_COMPILE}gcc", "--version"], LINUX_DIR, what="gcc --version").splitlines()[0]
    ld = run([f"{CROSS_COMPILE}ld", "--version"], LINUX_DIR, what="ld --version").splitlines()[0]
    return {"gcc": gcc, "ld": ld}


def manifest(kernel: Kernel | None, previous: dict | None, init: bytes, cpio: bytes,
             files: dict[str, bytes]) -> dict:
    """What the shipped files are and how they were built; kernel fields kept from `previous`
    when only the initramfs was rebuilt."""
    init_part = {
        "source": f"guests/linux/{INIT_SOURCE}",
        "source_sha256": sha256((LINUX_DIR / INIT_SOURCE).read_bytes()),
        "compiler": f"zig cc {' '.join(INIT_CFLAGS)}",
        "ziglang": _ziglang_package_version(),
        "zig_version": zig_version(),
        "init_sha256": sha256(init),
        "cpio_sha256": sha256(cpio),
        "members": sorted(e.name for e in initramfs_entries(init)),
    }
    if kernel is None:
        if previous is None:
            raise BuildError(f"--initramfs-only needs an existing {MANIFEST_FILE} for the kernel's fields")
        kernel_part, source_part, toolchain = previous["kernel"], previous["source"], previous["toolchain"]
    else:
        source_part = {
            "package": SOURCE_PACKAGE,
            "version": SOURCE_VERSION,
            "tarball": str(SOURCE_TARBALL),
            "tarball_sha256": sha256(SOURCE_TARBALL.read_bytes()),
        }
        toolchain = {
            "packages": dict(PINNED_PACKAGES),
            **compiler_versions(),
        }
        config = parse_config(kernel.config)
        kernel_part = {
            "release": kernel.release,
            "banner": kernel.banner,
            "arch": ARCH,
            "base_config": "tinyconfig",
            "config_fragment": "guests/linux/pvtime.config",
            "config_fragment_sha256": sha256(FRAGMENT.read_bytes()),
            "config_sha256": sha256(kernel.config.encode()),
            "hz": int(config["CONFIG_HZ"]),
            "nr_cpus": int(config["CONFIG_NR_CPUS"]),
            "kbuild": {**KBUILD, "LOCALVERSION": ""},
            "make": f"make ARCH={ARCH} CROSS_COMPILE={CROSS_COMPILE} Image",
            "image_size": len(kernel.image),
            "image_sha256": sha256(kernel.image),
        }
    return {
        "source": source_part,
        "toolchain": toolchain,
        "kernel": kernel_part,
        "initramfs": init_part,
        "files": {name: sha256(data) for name, data in sorted(files.items())},
    }


def _ziglang_package_version() -> str:
    from importlib.metadata import version

    return version("ziglang")


def build_all(out_dir: Path, work_dir: Path | None, jobs: int, initramfs_only: bool) -> None:
    """Build and write every file of `BUILT_FILES` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kernel = None
    previous = None
    if initramfs_only:
        manifest_path = out_dir / MANIFEST_FILE
        previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    else:
        check_packages()
    with tempfile.TemporaryDirectory(prefix="pvtime-linux-") as tmp:
        if not initramfs_only:
            kernel = build_kernel(work_dir or Path(tmp) / "kernel", jobs)
        init = build_init(Path(tmp) / "init")
        cpio = gzip_bytes(newc_archive(initramfs_entries(init)))
        files = {INITRAMFS_FILE: cpio}
        if kernel is not None:
            files[KERNEL_FILE] = gzip_bytes(kernel.image)
            files.update(license_bytes(kernel.tree))
        else:
            files.update({name: (out_dir / name).read_bytes() for name in (KERNEL_FILE, *LICENSE_FILES)
                          if (out_dir / name).is_file()})
        meta = manifest(kernel, previous, init, cpio, files)
    for name, data in files.items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (out_dir / MANIFEST_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if kernel is not None:
        print(f"{kernel.banner}\nImage {len(kernel.image)} bytes, {KERNEL_FILE} {len(files[KERNEL_FILE])} bytes")
    print(f"{INITRAMFS_FILE} {len(cpio)} bytes (/init {len(init)} bytes)\nwrote {out_dir}")


def check(shipped_dir: Path, jobs: int) -> list[str]:
    """Rebuild everything in a temporary directory; the lines describing each shipped file's state."""
    lines = []
    with tempfile.TemporaryDirectory(prefix="pvtime-linux-check-") as tmp:
        built_dir = Path(tmp) / "out"
        build_all(built_dir, None, jobs, initramfs_only=False)
        for name in BUILT_FILES:
            shipped, built = shipped_dir / name, built_dir / name
            if not shipped.is_file():
                lines.append(f"MISSING {name}")
            elif shipped.read_bytes() == built.read_bytes():
                lines.append(f"identical {name} ({sha256(built.read_bytes())})")
            elif name.endswith(".gz") and gzip.decompress(shipped.read_bytes()) == gzip.decompress(built.read_bytes()):
                lines.append(f"DIFFERENT {name}: same content, other compression (zlib version?)")
            else:
                lines.append(f"DIFFERENT {name}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where the built files go (or are checked)")
    parser.add_argument("--work-dir", type=Path, help="unpack and build the kernel here, reused next time "
                        "(default: a temporary directory)")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="make -j (default 2)")
    parser.add_argument("--initramfs-only", action="store_true", help="rebuild only /init and the initramfs")
    parser.add_argument("--check", action="store_true", help="rebuild everything in a temporary directory and "
                        "compare with the files in --out-dir")
    args = parser.parse_args(argv)
    try:
        if args.check:
            lines = check(args.out_dir.resolve(), args.jobs)
            print("\n".join(lines))
            ok = all(line.startswith("identical") for line in lines)
            print("check: the shipped files match a rebuild" if ok else "check: FAILED")
            return 0 if ok else 1
        build_all(args.out_dir.resolve(), args.work_dir.resolve() if args.work_dir else None, args.jobs,
                  args.initramfs_only)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
