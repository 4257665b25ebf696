"""ntkit's Triton kernels compiled (not interpreted) for an H100/H200 (sm_90) by Triton's own compiler and
assembler, which need no GPU: they compile, in the variants the engines launch, and keep their registers without
spilling to local memory at the chosen block shapes (the flat kernel: 95 registers, 123 in its variant with erf's
branch; 32 × 128 blocks spilled)."""

import json
import os
import subprocess
import sys

_COMPILE = """
import inspect, json, subprocess, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from ntkit.kernels import triton_flat as flat, triton_series as series


def usage(fn, pointer_types, constants, warps):
    names = list(inspect.signature(fn).parameters)
    signature = {n: "constexpr" if n in constants else pointer_types(n) if n.endswith("_ptr") else "i32"
                 for n in names}
    kernel = triton.compile(ASTSource(fn=JITFunction(fn), signature=signature, constexprs=constants),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    path = sys.argv[1] + "/kernel.cubin"
    open(path, "wb").write(kernel.asm["cubin"])
    tool = triton.__path__[0] + "/backends/nvidia/bin/cuobjdump"
    out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=True).stdout
    return out.split("Function")[1]


report = {}
for wide, need, erf in ((False, True, False), (True, False, False), (False, True, True)):
    constants = dict(N_OPS=7, NEED_NTK=need, COUNT=need, HAS_ERF=erf, SNAP=flat._SNAP, NEAR=1 - 1e-4,
                     TINY=flat.SUBNORMAL_SCALE, WIDE=wide, BLOCK_M=flat._BLOCK_M, BLOCK_N=flat._BLOCK_N)
    report[f"flat, int64 offsets {wide}, NTK {need}, erf {erf}"] = usage(
        flat._flat_recursion, lambda n: "*i32" if n == "counter_ptr" else "*fp32", constants, flat._WARPS)
for dtype, terms in (("fp32", 8), ("fp64", 2048)):
    constants = dict(WIDE=False, N_TERMS=terms, BLOCK_M=series._BLOCK_M, BLOCK_N=series._BLOCK_N)
    report[f"series, {dtype}, {terms} terms"] = usage(series._horner_tile, lambda n: "*" + dtype, constants,
                                                     series._WARPS)
print(json.dumps(report))
"""


def test_kernels_compile_for_an_sm90_gpu_without_spilling(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", _COMPILE, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report) == 5
    for variant, usage in report.items():
        registers = int(usage.split("REG:")[1].split()[0])
        assert "STACK:0" in usage and "LOCAL:0" in usage and registers <= 128, (variant, usage)
