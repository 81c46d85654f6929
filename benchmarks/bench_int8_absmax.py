"""pytest-benchmark tests of ``lmkernels.bench.int8_absmax`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import int8_absmax
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(int8_absmax)
