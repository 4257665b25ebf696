"""``ntkit._memory.empty_output``: large kernel outputs on Linux CPUs are advised to use transparent huge pages."""

import sys

import pytest
import torch

from ntkit import _memory


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that contains ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(part, 16) for part in head.split("-"))
                inside = low <= address < high
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping contains {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are a Linux feature")
def test_large_outputs_are_advised_to_use_huge_pages():
    out = _memory.empty_output((2048, 2048), torch.float32, "cpu")  # 16 MiB
    assert out.shape == (2048, 2048) and out.dtype == torch.float32 and out.is_contiguous()
    interior = -(-out.data_ptr() // (2 << 20)) * (2 << 20)
    assert "hg" in _vm_flags(interior)  # MADV_HUGEPAGE taken for the buffer's 2 MiB-aligned pages
    out.fill_(1.0)
    assert float(out.sum()) == 2048 * 2048  # an ordinary tensor


def test_small_and_device_outputs_are_left_alone(monkeypatch):
    advised = []
    monkeypatch.setattr(_memory, "_advise_huge_pages", lambda address, nbytes: advised.append(nbytes))
    small = _memory.empty_output((100, 100), torch.float64, "cpu")
    assert small.shape == (100, 100) and small.dtype == torch.float64 and advised == []
    _memory.empty_output((1500, 1500), torch.float64, torch.device("cpu"))  # 18 MB
    assert advised == [1500 * 1500 * 8]
    assert not _memory._advise_huge_pages(4096, 4096)  # no whole 2 MiB page inside: nothing to advise
