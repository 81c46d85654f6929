"""pytest-benchmark tests of ``lmkernels.bench.embedding_bag`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import embedding_bag
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(embedding_bag)
