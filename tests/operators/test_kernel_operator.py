"""nk.KernelOperator: products, rows, diagonal and dense form equal the dense kernel; storage; memory budget."""

import json
import subprocess
import sys

import pytest
import torch

import ntkit as nk

GEN = torch.Generator().manual_seed(0)
X = torch.randn(37, 5, generator=GEN, dtype=torch.float64)
Y = torch.randn(11, 5, generator=GEN, dtype=torch.float64)
IMAGES = torch.randn(9, 2, 6, 6, generator=GEN, dtype=torch.float64)
MLP = nk.mlp(3, 16, b_std=0.1)
CNN = nk.cnn(2, readout="gap", b_std=0.1)


@pytest.mark.parametrize("store", [None, "memory", "folder"])
@pytest.mark.parametrize("get", ["ntk", "nngp"])
def test_products_equal_dense_products(store, get, tmp_path):
    """float64, 1e-10 relative: panels of 8 rows (5 panels, the last partial), symmetric and rectangular kernels,
    vectors and blocks of right-hand sides, for an MLP and a pooled CNN."""
    store = tmp_path if store == "folder" else store
    for arch, x, x2 in ((MLP, X, None), (MLP, X, Y), (CNN, IMAGES, None)):
        op = nk.KernelOperator(arch, x, x2, get=get, panel_rows=8, store=store)
        dense = arch.kernel(x, x2, get=get)[get]
        for v in (torch.randn(op.shape[1], dtype=torch.float64), torch.randn(op.shape[1], 3, dtype=torch.float64)):
            product = op @ v
            assert product.dtype == torch.float64 and product.shape == (op.shape[0], *v.shape[1:])
            torch.testing.assert_close(product, dense @ v, rtol=1e-10, atol=1e-10 * float(dense.abs().max()))
        torch.testing.assert_close(op.dense(), dense, rtol=1e-10, atol=0)


def test_rows_and_diagonal_are_those_of_the_kernel():
    op = nk.KernelOperator(MLP, X)
    dense = MLP.kernel(X, get="ntk").ntk
    index = [3, 0, 36, 3]
    torch.testing.assert_close(op.rows(index), dense[index], rtol=1e-13, atol=0)
    torch.testing.assert_close(op.rows(slice(5, 9)), dense[5:9], rtol=1e-13, atol=0)
    assert torch.equal(op.diag(), dense.diagonal())  # kernel_diagonal: bitwise the symmetric kernel's diagonal
    assert torch.equal(op.rows([4])[0, 4], dense[4, 4])
    assert (op.shape, op.dtype, op.device) == ((37, 37), torch.float64, torch.device("cpu"))
    float32 = nk.KernelOperator(MLP, X.float())
    assert float32.dtype == torch.float32 and (float32 @ torch.ones(37)).dtype == torch.float64


def test_a_folder_store_is_reused_by_another_operator(tmp_path, monkeypatch):
    first = nk.KernelOperator(MLP, X, panel_rows=10, store=tmp_path)
    v = torch.randn(37, dtype=torch.float64)
    expected = first @ v
    assert len(list(tmp_path.glob("kernel-*.npy"))) == 4
    again = nk.KernelOperator(nk.mlp(3, 16, b_std=0.1), X, panel_rows=10, store=tmp_path)
    monkeypatch.setattr(nk.Serial, "kernel", lambda *a, **k: pytest.fail("recomputed a stored panel"))
    torch.testing.assert_close(again @ v, expected, rtol=0, atol=0)
    other_inputs = nk.KernelOperator(MLP, X + 1, panel_rows=10, store=tmp_path)
    with pytest.raises(pytest.fail.Exception):
        other_inputs @ v  # different data: different files, computed anew


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="get must be one of"):
        nk.KernelOperator(MLP, X, get="both")
    with pytest.raises(TypeError, match="arch must be an ntkit architecture"):
        nk.KernelOperator(torch.nn.Linear(5, 1), X)
    op = nk.KernelOperator(MLP, X, Y)
    with pytest.raises(ValueError, match=r"operand must have shape \(11,\) or \(11, k\)"):
        op @ torch.ones(37)
    with pytest.raises(ValueError, match="diag needs a square operator"):
        op.diag()
    with pytest.raises(ValueError, match="panel_rows must be a positive integer"):
        nk.KernelOperator(MLP, X, panel_rows=0)
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        nk.KernelOperator(MLP, X, memory_budget=-1)


def test_requests_over_the_budget_are_refused_with_an_estimate():
    with pytest.raises(MemoryError, match=r"store='memory' keeps the whole 37x37 kernel: 10.70 KiB, over "
                                          r"memory_budget=4.00 KiB"):
        nk.KernelOperator(MLP, X, memory_budget=4096, store="memory")
    op = nk.KernelOperator(MLP, X, memory_budget=4096)  # recomputes panels of 4096 / (2·37·16) = 3 rows
    assert op.panel_rows == 3 and op._store is None
    with pytest.raises(MemoryError, match="the 37x37 kernel needs 10.70 KiB"):
        op.dense()
    with pytest.raises(MemoryError, match="panel_rows=20 needs"):
        nk.KernelOperator(MLP, X, memory_budget=4096, panel_rows=20)


def test_memory_budget_is_honoured_in_a_fresh_process():
    """N = 6,000: the float32 kernel is 137 MiB; with a 32 MiB budget the product's peak resident memory rises by
    well under the kernel's size (panels of 32 MiB / (2·6000·12 B) = 233 rows, plus the engine's tiles)."""
    code = """
import json, resource, torch, ntkit as nk
x = torch.randn(6000, 8, generator=torch.Generator().manual_seed(0))
op = nk.KernelOperator(nk.mlp(2, 8), x, memory_budget=32 * 2**20)
v = torch.randn(6000)
op @ v[:, None][:, :0]  # warm-up of the code paths on no right-hand side
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = op @ v
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(rise_mib=(peak - base) / 1024, panel_rows=op.panel_rows, finite=bool(torch.isfinite(out).all()))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["panel_rows"] == 233 and result["finite"]
    assert result["rise_mib"] < 64, result  # 2x the budget; the whole kernel would be 137 MiB


def test_normal_product_is_kt_k_u_plus_v():
    op = nk.KernelOperator(MLP, X, Y, panel_rows=6)
    dense = MLP.kernel(X, Y, get="ntk").ntk
    u, v = torch.randn(11, 2, dtype=torch.float64), torch.randn(37, 2, dtype=torch.float64)
    torch.testing.assert_close(op.normal_product(u, v), dense.T @ (dense @ u + v), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.normal_product(u[:, 0]), dense.T @ (dense @ u[:, 0]), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"v must have shape \(37, 2\)"):
        op.normal_product(u, v[:3])
