"""pytest-benchmark tests of ``lmkernels.bench.tfree_words`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import tfree_words
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(tfree_words)
