"""pytest-benchmark tests of ``lmkernels.bench.token_divergence`` (made by ``lmkernels.bench.pytest_mirror``)."""

from lmkernels.bench import token_divergence
from lmkernels.bench.pytest_mirror import mirror

test_ours, test_peer = mirror(token_divergence)
