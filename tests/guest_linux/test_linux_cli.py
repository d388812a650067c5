"""`pvtime linux run` with a user's own initramfs: a static /init of the test's own (a few lines of
AArch64 assembly: write(2) a line, then reboot(2) POWER_OFF), in an uncompressed newc cpio."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pvtime.cli import main

REPO = Path(__file__).resolve().parents[2]
INIT_S = """
    .global _start
_start:
    mov x0, #1
    adr x1, msg
    mov x2, #(end - msg)
    mov x8, #64              // __NR_write
    svc #0
    movz x0, #0xfee1, lsl #16
    movk x0, #0xdead         // LINUX_REBOOT_MAGIC1
    movz x1, #0x2812, lsl #16
    movk x1, #0x1969         // LINUX_REBOOT_MAGIC2
    movz x2, #0x4321, lsl #16
    movk x2, #0xfedc         // LINUX_REBOOT_CMD_POWER_OFF
    mov x3, #0
    mov x8, #142             // __NR_reboot
    svc #0
1:  b 1b
msg: .ascii "hello from my own init\\n"
end:
"""


def _linux_build():
    spec = importlib.util.spec_from_file_location("linux_build", REPO / "guests" / "linux" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def own_initramfs(tmp_path: Path) -> Path:
    src = tmp_path / "init.S"
    src.write_text(INIT_S)
    init = tmp_path / "init"
    subprocess.run([sys.executable, "-m", "ziglang", "cc", "--target=aarch64-linux-musl", "-nostdlib", "-static",
                    "-o", str(init), str(src)], check=True, capture_output=True)
    build = _linux_build()
    cpio = tmp_path / "own.cpio"  # uncompressed: the kernel takes either
    cpio.write_bytes(build.newc_archive(build.initramfs_entries(init.read_bytes())))
    return cpio


def test_a_users_own_initramfs_boots_and_powers_off(tmp_path: Path) -> None:
    cpio = own_initramfs(tmp_path)
    result = CliRunner().invoke(main, ["linux", "run", "--initrd", str(cpio), "--time-limit", "5"])
    assert result.exit_code == 0, result.output
    assert "Run /init as init process" in result.output
    assert "hello from my own init" in result.output
    assert "pvtime-init" not in result.output  # not the packaged /init


def test_a_kernel_that_is_not_an_arm64_image_is_a_tool_error(tmp_path: Path) -> None:
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x7fELF" + bytes(200))
    result = CliRunner().invoke(main, ["linux", "run", "--kernel", str(bad)])
    assert result.exit_code == 125 and "not an arm64 Image" in result.output
