"""pytest-benchmark tests of ``lmkernels.bench.umup_linear`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import umup_linear
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(umup_linear)
