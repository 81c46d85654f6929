"""pytest-benchmark tests of ``lmkernels.bench.dtm_sweep`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import dtm_sweep
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(dtm_sweep)
