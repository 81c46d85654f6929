"""u-muP (Blake et al. 2024): unit-scaled ops and modules, scale-free FP8 linears, u-muP optimiser rules."""
