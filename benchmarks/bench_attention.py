"""pytest-benchmark tests of ``lmkernels.bench.attention`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import attention
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(attention)
