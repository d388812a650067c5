"""pvtime's Linux guest (guests/linux/, shipped in pvtime/images/linux): the kernel Image and its
initramfs are what their recipe says, and the kernel boots to /init (under QEMU TCG here)."""
