"""Recovery training between sparsification steps: the masks hold, the target is reached, user loops plug in."""

import pytest
import torch

from lmkernels import dtm


@pytest.fixture
def stream(model):
    return torch.randint(model.vocab_size, (400,), generator=torch.Generator().manual_seed(2))


def _prune_all(model, sparsity):
    with torch.no_grad():
        for weight in dtm.components(model).values():
            weight.copy_(dtm.magnitude_prune(weight, sparsity))


def test_masks_mark_the_kept_weights_and_apply_zeroes_the_rest(model):
    _prune_all(model, 0.5)
    masks = dtm.keep_masks(model)
    assert list(masks) == list(dtm.components(model))
    for name, weight in dtm.components(model).items():
        assert torch.equal(masks[name], weight != 0)
    with torch.no_grad():
        for weight in dtm.components(model).values():
            weight.add_(1.0)
    dtm.apply_masks(model, masks)
    for name, weight in dtm.components(model).items():
        assert torch.equal(weight == 0, ~masks[name])
    with pytest.raises(ValueError, match="masks: expected a bool tensor of shape"):
        dtm.apply_masks(model, {"layers.0.q": masks["layers.0.q"].float()})
    with pytest.raises(ValueError, match="masks"):
        dtm.apply_masks(model, {"layers.0.q": masks["layers.0.k"][:1]})
    with pytest.raises(ValueError, match="do not exist"):
        dtm.apply_masks(model, {"layers.7.q": masks["layers.0.q"]})


def test_recovery_training_keeps_the_zeros_and_trains_the_rest(model, stream):
    _prune_all(model, 0.6)
    masks = dtm.keep_masks(model)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    recovery = dtm.RecoveryTraining(stream, steps=3, seq_len=8, batch_size=2)
    recovery(model, masks)
    assert len(recovery.losses) == 1 and len(recovery.losses[0]) == 3
    assert not model.training
    for name, weight in dtm.components(model).items():
        assert torch.equal(weight == 0, ~masks[name])
    assert all(not torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())
    # Every call draws new windows from the one generator.
    recovery(model, masks)
    assert recovery.losses[1] != recovery.losses[0]


def test_sparsify_with_recovery_reaches_the_same_target_exactly(model, prompts, stream, tmp_path):
    import copy

    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    plain, recovered = copy.deepcopy(model), copy.deepcopy(model)
    plan = dtm.sparsify(plain, 0.6, references, method="uniform", iterations=3, progress=False)
    recovery = dtm.RecoveryTraining(stream, steps=2, seq_len=8, batch_size=2)
    recovered_plan = dtm.sparsify(recovered, 0.6, references, method="uniform", iterations=3, recover=recovery,
                                  progress=False)
    # Uniform allocation depends on the sparsity alone, so recovery must not move it by one weight.
    assert recovered_plan.sparsity == plan.sparsity
    assert recovered_plan.global_sparsity == plan.global_sparsity == dtm.global_sparsity(recovered)
    assert len(recovery.losses) == 3
    assert not torch.equal(dtm.components(recovered)["layers.0.q"], dtm.components(plain)["layers.0.q"])


def test_distilling_recovery_pulls_the_pruned_model_toward_its_teacher(model, stream):
    import copy

    import torch.nn.functional as F

    teacher = copy.deepcopy(model)
    dense = copy.deepcopy(model)
    identical = dtm.RecoveryTraining(stream, steps=1, seq_len=8, batch_size=2, teacher=teacher)
    identical(copy.deepcopy(model), dtm.keep_masks(model))
    assert identical.losses == [[0.0]]  # KL(teacher || itself) is exactly zero

    _prune_all(model, 0.6)
    masks = dtm.keep_masks(model)
    windows = stream[:64].view(8, 8)

    def divergence():
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(model(windows).flatten(0, 1), -1),
                                  F.log_softmax(teacher(windows).flatten(0, 1), -1), reduction="batchmean",
                                  log_target=True))

    before = divergence()
    recovery = dtm.RecoveryTraining(stream, steps=20, seq_len=8, batch_size=4, learning_rate=3e-3, teacher=teacher)
    recovery(model, masks)
    assert divergence() < 0.8 * before
    for name, weight in dtm.components(model).items():
        assert torch.equal(weight == 0, ~masks[name])
    for parameter, original in zip(teacher.parameters(), dense.parameters()):
        assert torch.equal(parameter, original)


@pytest.mark.parametrize("criterion", dtm.CRITERIA)
def test_sparsify_hands_nested_masks_to_the_recovery_and_keeps_them(model, prompts, stream, tmp_path, criterion):
    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    recovery = dtm.RecoveryTraining(stream, steps=2, seq_len=8, batch_size=2)
    seen = []

    def recover(m, masks):
        assert torch.is_grad_enabled()
        for name, weight in dtm.components(m).items():
            assert torch.equal(weight != 0, masks[name])
        recovery(m, masks)
        seen.append({name: mask.clone() for name, mask in masks.items()})

    plan = dtm.sparsify(model, 0.5, references, method="fdt", iterations=2, criterion=criterion, recover=recover,
                        progress=False)
    assert len(seen) == 2 and plan.criterion == criterion
    for name in seen[0]:
        assert bool((seen[0][name] | ~seen[1][name]).all())  # what step 1 pruned stays pruned in step 2
        assert torch.equal(dtm.components(model)[name] != 0, seen[1][name])
    assert plan.global_sparsity == pytest.approx(0.5, abs=1e-3)


def test_sparsify_reapplies_the_masks_after_a_loop_that_ignores_them(model, prompts, tmp_path):
    import copy

    references = dtm.reference_continuations(model, prompts, 8, 5, cache_dir=tmp_path)
    reference_model = copy.deepcopy(model)
    plan = dtm.sparsify(reference_model, 0.5, references, method="uniform", iterations=2, progress=False)

    def careless(m, masks):
        m.train()
        with torch.no_grad():
            for parameter in m.parameters():
                parameter.add_(0.01)

    careless_plan = dtm.sparsify(model, 0.5, references, method="uniform", iterations=2, recover=careless,
                                 progress=False)
    assert careless_plan.sparsity == plan.sparsity and not model.training


def test_recovery_bad_input(model, llama, prompts, stream, tmp_path):
    references = dtm.reference_continuations(model, prompts, 4, 5, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="recover"):
        dtm.sparsify(model, 0.5, references, recover=200)
    with pytest.raises(ValueError, match="criterion"):
        dtm.sparsify(model, 0.5, references, criterion="sparsegpt")
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            dtm.RecoveryTraining(stream, steps)
    with pytest.raises(TypeError, match="stream"):
        dtm.RecoveryTraining(stream.float(), 2)
    with pytest.raises(ValueError, match="stream"):
        dtm.RecoveryTraining(stream[:8], 2, seq_len=8)
    with pytest.raises(ValueError, match="learning_rate"):
        dtm.RecoveryTraining(stream, 2, learning_rate=0.0)
    for warmup, error in ((-1, ValueError), ("a", TypeError), (1.5, TypeError)):
        with pytest.raises(error, match="warmup"):
            dtm.RecoveryTraining(stream, 2, warmup=warmup)
    with pytest.raises(ValueError, match="stream: token ids"):
        dtm.RecoveryTraining(stream + model.vocab_size, 2, seq_len=8)(model, dtm.keep_masks(model))
    with pytest.raises(TypeError, match="model"):
        dtm.RecoveryTraining(stream, 2, seq_len=8)(llama, dtm.keep_masks(llama))
    with pytest.raises(TypeError, match="teacher"):
        dtm.RecoveryTraining(stream, 2, teacher=llama)
    with pytest.raises(ValueError, match="teacher: expected a separate copy"):
        dtm.RecoveryTraining(stream, 2, seq_len=8, teacher=model)(model, dtm.keep_masks(model))
    other = type(model)(model.vocab_size * 2, model.config)
    with pytest.raises(ValueError, match="teacher: expected the model's vocabulary"):
        dtm.RecoveryTraining(stream, 2, seq_len=8, teacher=other)(model, dtm.keep_masks(model))


def test_recovery_sizes_and_types_are_named(stream):
    for name in ("seq_len", "batch_size"):
        with pytest.raises(ValueError, match=name):
            dtm.RecoveryTraining(stream, 2, **{name: 0})
    with pytest.raises(TypeError, match="learning_rate"):
        dtm.RecoveryTraining(stream, 2, learning_rate="x")
