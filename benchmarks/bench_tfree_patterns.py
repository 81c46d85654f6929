"""pytest-benchmark tests of ``lmkernels.bench.tfree_patterns`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import tfree_patterns
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(tfree_patterns)
