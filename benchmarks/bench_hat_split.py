"""pytest-benchmark tests of ``lmkernels.bench.hat_split`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import hat_split
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(hat_split)
