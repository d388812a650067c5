"""The VMM's device tree for a Linux guest, read back with an independent parser (`fdt`)."""

import fdt

from pvtime.vmm.devicetree import DeviceTreeSpec, TimerIntids, virt_device_tree


def mpidrs(n):
    # KVM's reset_mpidr: Aff0 = id & 0xf, Aff1 = id >> 4, bit 31 RES1
    return tuple((1 << 31) | (i & 0xF) | (i >> 4) << 8 for i in range(n))


def tree(**kw):
    kw.setdefault("mpidrs", mpidrs(2))
    kw.setdefault("ram_size", 128 << 20)
    return fdt.parse_dtb(virt_device_tree(DeviceTreeSpec(**kw)))


def test_memory_cpus_psci_and_chosen_as_linux_reads_them():
    t = tree(mpidrs=mpidrs(18), bootargs="console=ttyAMA0 quiet", initrd=(0x4400_0000, 0x4410_0000))
    assert list(t.get_node("/memory@40000000").get_property("reg").data) == [0, 0x4000_0000, 0, 128 << 20]
    cpus = t.get_node("/cpus")
    # arch/arm64/kernel/smp.c of_get_cpu_hwid: a cpu's reg is its MPIDR affinity (Aff1 = 1 for cpu 16)
    assert [n.name for n in cpus.nodes][15:] == ["cpu@f", "cpu@100", "cpu@101"]
    assert all(n.get_property("enable-method").value == "psci" for n in cpus.nodes)
    psci = t.get_node("/psci")
    assert psci.get_property("method").value == "hvc"
    assert "arm,psci-0.2" in list(psci.get_property("compatible").data)
    chosen = t.get_node("/chosen")
    assert chosen.get_property("bootargs").value == "console=ttyAMA0 quiet"
    assert list(chosen.get_property("linux,initrd-start").data) == [0, 0x4400_0000]
    assert list(chosen.get_property("linux,initrd-end").data) == [0, 0x4410_0000]
    assert chosen.get_property("stdout-path").value == "/pl011@9000000"


def test_the_timer_ppis_follow_the_vcpu_timer_attributes():
    # binding arm,arch_timer.yaml: secure phys, non-secure phys, virt, hyp; a PPI number is INTID-16
    t = tree(timers=TimerIntids(vtimer=20, ptimer=21))
    cells = list(t.get_node("/timer").get_property("interrupts").data)
    assert cells[1::3] == [29 - 16, 21 - 16, 20 - 16, 26 - 16]
    assert all(c == 1 for c in cells[0::3])  # GIC_PPI
    assert cells[2] == 0x304  # level-high, CPU mask of 2 vCPUs (GIC_CPU_MASK_SIMPLE(2))


def test_a_gic_node_exists_only_with_a_vgic():
    with_gic = tree()
    gic = with_gic.get_node("/intc@8000000")
    assert gic.get_property("interrupt-controller") is not None
    assert list(gic.get_property("reg").data) == [0, 0x0800_0000, 0, 0x1_0000, 0, 0x0801_0000, 0, 0x1_0000]
    root = with_gic.get_node("/")
    assert root.get_property("interrupt-parent").value == gic.get_property("phandle").value
    assert list(with_gic.get_node("/pl011@9000000").get_property("interrupts").data) == [0, 1, 4]
    without = tree(gic=None)
    assert not without.exist_node("/intc@8000000")
    assert without.get_node("/").get_property("interrupt-parent") is None
    assert without.get_node("/pl011@9000000").get_property("interrupts") is None


def test_the_pl011_has_the_clocks_the_amba_bus_asks_for():
    t = tree()
    uart = t.get_node("/pl011@9000000")
    clk = t.get_node("/apb-pclk").get_property("phandle").value
    assert list(uart.get_property("clocks").data) == [clk, clk]
    assert list(uart.get_property("clock-names").data) == ["uartclk", "apb_pclk"]
