"""pytest-benchmark tests of ``lmkernels.bench.fp8_cast`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import fp8_cast
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(fp8_cast)
