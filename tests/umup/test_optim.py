"""The u-muP parameter groups equal unit-scaling 0.3.5's ``optim`` helpers, and Adam / AdamW trained with them
take the same steps as unit-scaling's optimisers on the same model."""

import pytest
import torch
import unit_scaling as uu  # the oracle: unit-scaling==0.3.5, a test dependency

from lmkernels.umup import TransformerDecoder, optim


def _model(seed=0):
    torch.manual_seed(seed)
    return TransformerDecoder(32, 50, 3, 4, expansion_factor=2)


def _by_param(groups):
    return {id(g["params"][0]): (float(g["lr"]), g["weight_decay"]) for g in groups}


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
@pytest.mark.parametrize("independent", [True, False])
def test_groups_equal_unit_scalings(weight_decay, independent):
    model = _model()
    ours = optim.scaled_parameters(model.parameters(), 0.25, weight_decay, independent)
    theirs = uu.optim.scaled_parameters(model.parameters(), uu.optim.lr_scale_func_adam, 0.25, weight_decay,
                                        independent)
    assert _by_param(ours) == _by_param(theirs)
    their_model = uu.TransformerDecoder(32, 50, 3, 4)  # their modules, read through their tags
    assert _by_param(optim.scaled_parameters(their_model.parameters(), 0.25, weight_decay, independent)) == \
        _by_param(uu.optim.scaled_parameters(their_model.parameters(), uu.optim.lr_scale_func_adam, 0.25,
                                             weight_decay, independent))


def test_rules_by_type_and_depth():
    model = _model()
    lr = {name: g["lr"] for name, g in zip([n for n, _ in model.named_parameters()],
                                           optim.scaled_parameters(model.parameters(), 1.0))}
    assert lr["embedding.weight"] == 32**-0.5  # its "fan_in" is the hidden size
    assert lr["projection.weight"] == 1.0
    assert lr["layers.0.mhsa.linear_qkv.weight"] == 3**-0.5 * 32**-0.5
    assert lr["layers.2.mlp.linear_2.weight"] == 3**-0.5 * 64**-0.5  # expansion 2: fan_in 64


def test_group_options_are_kept_and_overridden():
    model = _model()
    hidden = [p for n, p in model.named_parameters() if n.startswith("layers.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("layers.")]
    entries = [{"params": hidden, "lr": 0.5, "betas": (0.8, 0.9)}, {"params": rest}]
    ours = optim.scaled_parameters(entries, 1.0, 0.01)
    theirs = uu.optim.scaled_parameters(entries, uu.optim.lr_scale_func_adam, 1.0, 0.01)
    assert _by_param(ours) == _by_param(theirs)
    assert all(g["betas"] == (0.8, 0.9) for g in ours[:len(hidden)])


@pytest.mark.parametrize("ours_cls, their_cls", [(optim.Adam, uu.optim.Adam), (optim.AdamW, uu.optim.AdamW)])
def test_training_steps_equal_unit_scalings(ours_cls, their_cls):
    ours, theirs = _model(1), _model(1)
    theirs.load_state_dict(ours.state_dict())
    opt_ours = ours_cls(ours.parameters(), lr=0.1, weight_decay=1e-3, betas=(0.9, 0.95))
    opt_theirs = their_cls(theirs.parameters(), lr=0.1, weight_decay=1e-3, betas=(0.9, 0.95))
    ids = torch.randint(50, (4, 12), generator=torch.Generator().manual_seed(2))
    for _ in range(2):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            model.loss(ids).backward()
            opt.step()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_untagged_parameters_and_bad_learning_rates():
    plain = torch.nn.Linear(3, 3)
    with pytest.raises(ValueError, match="u-muP tags"):
        optim.AdamW(plain.parameters(), lr=0.1)
    groups = optim.scaled_parameters(plain.parameters(), 0.1, 0.01, allow_untagged=True)
    assert [g["lr"] for g in groups] == [0.1, 0.1] and groups[0]["weight_decay"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr"):
        optim.scaled_parameters(_model().parameters())
    with pytest.raises(ValueError, match="lr"):
        optim.scaled_parameters(_model().parameters(), 0.0, 0.1)
    lr = torch.tensor(0.5)
    groups = optim.scaled_parameters(_model().parameters(), lr)
    assert isinstance(groups[0]["lr"], torch.Tensor) and lr.item() == 0.5  # scaled in a clone


def test_named_parameters_are_taken_and_their_names_kept():
    model = _model()
    named = optim.AdamW(model.named_parameters(), lr=0.1, weight_decay=1e-3)
    plain = optim.AdamW(model.parameters(), lr=0.1, weight_decay=1e-3)
    assert [g["param_names"] for g in named.param_groups] == [[n] for n, _ in model.named_parameters()]
    assert _by_param(named.param_groups) == _by_param(plain.param_groups)
    grouped = optim.scaled_parameters([{"params": list(model.named_parameters())[:2], "lr": 0.5}], 1.0)
    assert [g["param_names"] for g in grouped] == [[n] for n, _ in list(model.named_parameters())[:2]]
    with pytest.raises(TypeError, match="^params: expected tensors, \\(name, tensor\\) pairs or parameter groups"):
        optim.AdamW([("weight", 3.0)], lr=0.1)
