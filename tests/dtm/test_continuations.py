"""Reference continuations: KV-cache generation, the reconcile check, the disk cache, FDT(F, F) = N."""

import pytest
import torch

from lmkernels import dtm
from lmkernels.dtm import continuations as continuations_module
from lmkernels.dtm.continuations import left_pad


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_cached_generation_equals_uncached(model, prompts, batch_size):
    cached = dtm.generate(model, prompts, 12, batch_size, use_cache=True)
    uncached = dtm.generate(model, prompts, 12, batch_size, use_cache=False)
    assert cached.shape == (5, 12) and torch.equal(cached, uncached)


def test_left_padding_does_not_change_a_prompt_continuation(model, prompts):
    alone = torch.cat([dtm.generate(model, [p], 10, 1) for p in prompts])
    assert torch.equal(dtm.generate(model, prompts, 10, 5), alone)


def test_generation_is_greedy(model, prompts):
    prompt = prompts[0]
    generated = dtm.generate(model, [prompt], 6, 1)[0]
    sequence = prompt
    for token in generated:
        assert model(sequence[None])[0, -1].argmax() == token
        sequence = torch.cat((sequence, token[None]))


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_fdt_of_the_model_against_itself_is_n_on_every_prompt(model, prompts, tmp_path, batch_size):
    references = dtm.reference_continuations(model, prompts, 20, batch_size, cache_dir=tmp_path)
    result = dtm.score(model, references)
    assert result.fdt.tolist() == [20] * 5 and result.sdt.sum() == 0
    assert result.summary()["fdt25"] == 20 and result.fdt_score() == 100


def test_reconcile_repairs_a_reference_that_the_evaluation_disagrees_with(model, prompts, monkeypatch):
    true_greedy = continuations_module.greedy
    calls = []

    def corrupted(model_, tokens, real, num_tokens, use_cache=True):
        result = true_greedy(model_, tokens, real, num_tokens, use_cache)
        if not calls:  # the first batch's decode goes wrong at token 3 of every prompt
            result[:, 3] = (result[:, 3] + 1) % 64
        calls.append(num_tokens)
        return result

    monkeypatch.setattr(continuations_module, "greedy", corrupted)
    references = dtm.reference_continuations(model, prompts, 10, 16, use_disk_cache=False)
    assert calls[0] == 10 and calls[1:] == [6] * 5  # each prompt resumed after the repaired token
    assert torch.equal(references.continuations, true_greedy(model, *left_pad(prompts), 10))
    assert dtm.score(model, references).fdt.tolist() == [10] * 5


def test_disk_cache_hit_skips_generation(model, prompts, tmp_path, monkeypatch):
    first = dtm.reference_continuations(model, prompts, 8, 2, cache_dir=tmp_path)
    assert (tmp_path / f"{first.key}.pt").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("generated although cached")

    monkeypatch.setattr(continuations_module, "greedy", fail)
    second = dtm.reference_continuations(model, prompts, 8, 2, cache_dir=tmp_path)
    assert second.key == first.key and torch.equal(second.continuations, first.continuations)


def test_a_failed_cache_write_leaves_no_file(model, prompts, tmp_path, monkeypatch):
    def full_disk(obj, path):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(continuations_module.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        dtm.reference_continuations(model, prompts, 4, 2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_depends_on_model_state_prompts_and_sizes(model, prompts, tmp_path):
    key = dtm.reference_continuations(model, prompts, 4, 2, cache_dir=tmp_path).key
    other_keys = {
        dtm.reference_continuations(model, prompts[:4], 4, 2, cache_dir=tmp_path).key,
        dtm.reference_continuations(model, prompts, 5, 2, cache_dir=tmp_path).key,
        dtm.reference_continuations(model, prompts, 4, 3, cache_dir=tmp_path).key,
    }
    with torch.no_grad():
        model.head.weight[0, 0] += 1e-3
    other_keys.add(dtm.reference_continuations(model, prompts, 4, 2, cache_dir=tmp_path).key)
    assert key not in other_keys and len(other_keys) == 4


def test_huggingface_llama_generation_and_fdt(llama, prompts, tmp_path):
    cached = dtm.generate(llama, prompts, 8, 5, use_cache=True)
    assert torch.equal(cached, dtm.generate(llama, prompts, 8, 5, use_cache=False))
    references = dtm.reference_continuations(llama, prompts, 8, 5, cache_dir=tmp_path)
    assert dtm.score(llama, references).fdt.tolist() == [8] * 5


def test_bad_input(model, prompts, tmp_path):
    with pytest.raises(ValueError, match="empty set"):
        dtm.reference_continuations(model, [], 4, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_tokens"):
        dtm.reference_continuations(model, prompts, 0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        dtm.generate(model, prompts, 4, 0)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        dtm.generate(model, [[1, 2], []], 4)
    with pytest.raises(IndexError, match=r"prompts\[0\].*\[0, 64\)"):
        dtm.generate(model, [[1, 64]], 4)
    with pytest.raises(TypeError, match="prompts"):
        dtm.generate(model, "hello", 4)
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        dtm.generate(model, [torch.ones(2, 2, dtype=torch.int64)], 4)
    with pytest.raises(TypeError, match="model"):
        dtm.generate(torch.nn.Linear(2, 2), prompts, 4)


def test_the_cache_key_covers_the_configuration_and_the_mode(tmp_path):
    from lmkernels.nn import CausalLM, DecoderConfig

    torch.manual_seed(0)
    four = CausalLM(64, DecoderConfig(dim=32, num_layers=2, num_heads=4)).eval()
    two = CausalLM(64, DecoderConfig(dim=32, num_layers=2, num_heads=2)).eval()
    two.load_state_dict(four.state_dict())  # the same weights, another model
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    first = dtm.reference_continuations(four, prompts, 8, 2, cache_dir=tmp_path)
    second = dtm.reference_continuations(two, prompts, 8, 2, cache_dir=tmp_path)
    assert first.key != second.key
    assert torch.equal(second.continuations, dtm.reference_continuations(two, prompts, 8, 2,
                                                                         use_disk_cache=False).continuations)
    assert dtm.reference_continuations(two, prompts, 8, 2, use_disk_cache=False).key is None
    # In eval mode whatever the model's mode, which is restored.
    assert torch.equal(dtm.reference_continuations(two.train(), prompts, 8, 2, cache_dir=tmp_path).continuations,
                       second.continuations)
    assert two.training


def test_the_cache_key_covers_the_attention_implementation(llama, prompts, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the cache argument under the name this transformers takes
        keys = set()
        for implementation in ("eager", "sdpa"):
            llama.set_attn_implementation(implementation)
            keys.add(dtm.reference_continuations(llama, prompts, 4, 2, cache_dir=tmp_path).key)
    assert len(keys) == 2
