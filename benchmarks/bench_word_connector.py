"""pytest-benchmark tests of ``lmkernels.bench.word_connector`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import word_connector
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(word_connector)
