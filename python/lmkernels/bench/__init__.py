"""``lmk bench``: microbenchmarks of lmkernels against the strongest available peers.

``harness`` holds the timing machinery, one module per kernel (``embedding_bag``,
``multilabel_bce``, ``tfree_words``, ...) holds its cases, ``cli`` runs them and prints the table,
and ``pytest_mirror`` turns a module's cases into the pytest-benchmark tests of ``benchmarks/``.
"""
