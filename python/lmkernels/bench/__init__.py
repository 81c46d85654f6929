"""``lmk bench``: microbenchmarks of lmkernels against the strongest available peers.

``harness`` holds the timing machinery, one module per kernel family holds its cases
(``sparse``, ``tfree_words``), and ``cli`` runs them and prints the table.
"""
