"""evaluating: eval mode inside the block, each submodule's own mode back afterwards, also on errors."""

import pytest
import torch

from lmkernels.nn import evaluating


def test_each_submodule_gets_its_own_mode_back():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[0].eval()  # a mixed state, which model.train(True) would not restore
    with pytest.raises(RuntimeError, match="inside"):
        with evaluating(model, None):
            assert not any(module.training for module in model.modules())
            raise RuntimeError("inside")
    assert [module.training for module in model.modules()] == [True, False, True]
