"""pytest-benchmark tests of ``lmkernels.bench.atman_explain`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import atman_explain
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(atman_explain)
