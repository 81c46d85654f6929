"""pytest-benchmark tests of ``lmkernels.bench.dictionary_score`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import dictionary_score
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(dictionary_score)
