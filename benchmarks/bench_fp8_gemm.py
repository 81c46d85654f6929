"""pytest-benchmark tests of ``lmkernels.bench.fp8_gemm`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import fp8_gemm
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(fp8_gemm)
