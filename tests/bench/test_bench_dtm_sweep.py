"""The component-sweep benchmark case at smoke-test size: both sides run and agree on FDT."""

import torch

from lmkernels.bench import dtm_sweep


def test_tiny_case_runs_both_sides_and_they_agree():
    (case,) = dtm_sweep.cases(quick=False, device="cpu", tiny=True)
    assert case.kernel == "dtm_sweep" and case.peer_scale == 7.0
    table = case.ours_fn()
    naive = case.peer_fn()
    assert len(naive) == 1  # one layer, every seventh component: layers.0.q
    assert torch.equal(table.results["layers.0.q"].fdt, naive[0])
