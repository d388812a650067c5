"""The CPU kinds: their names are those scenario files and migration streams carry."""

import pytest

from pvtime.cpu import CpuKind, create_cpu
from pvtime.cpu.model import ModelCpu


def test_each_kind_is_named_by_its_wire_name() -> None:
    assert [k.value for k in CpuKind] == ["model", "unicorn"]
    assert CpuKind("unicorn") is CpuKind.UNICORN and CpuKind(CpuKind.MODEL) is CpuKind.MODEL


def test_an_unknown_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="CPU backend 'x86': expected one of model, unicorn"):
        CpuKind("x86")


def test_create_cpu_takes_a_kind_or_its_name() -> None:
    assert isinstance(create_cpu(CpuKind.MODEL, 0), ModelCpu)
    assert isinstance(create_cpu("model", 1), ModelCpu)
