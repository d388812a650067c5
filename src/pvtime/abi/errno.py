"""Linux errno values the modelled KVM uAPI returns (docs/semantics.md section 3)."""

ENOENT = 2
ENXIO = 6
E2BIG = 7
EFAULT = 14
EBUSY = 16
EEXIST = 17
ENODEV = 19
EINVAL = 22
ENOSPC = 28

NAMES: dict[int, str] = {
    ENOENT: "ENOENT",
    ENXIO: "ENXIO",
    E2BIG: "E2BIG",
    EFAULT: "EFAULT",
    EBUSY: "EBUSY",
    EEXIST: "EEXIST",
    ENODEV: "ENODEV",
    EINVAL: "EINVAL",
    ENOSPC: "ENOSPC",
}
