"""pytest-benchmark tests of ``lmkernels.bench.tfree_encode`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import tfree_encode
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(tfree_encode)
