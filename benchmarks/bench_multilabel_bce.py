"""pytest-benchmark tests of ``lmkernels.bench.multilabel_bce`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import multilabel_bce
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(multilabel_bce)
