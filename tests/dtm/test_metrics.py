"""FDT / SDT from match matrices, aggregates, and the scoring pass's bad inputs."""

import math

import pytest
import torch

from lmkernels import dtm
from lmkernels.dtm import DivergenceResult
from lmkernels.nn import CausalLM, DecoderConfig


def test_hand_made_match_matrix_gives_known_fdt_and_sdt():
    match = torch.tensor([[1, 1, 1, 1, 1],
                          [0, 1, 1, 1, 1],
                          [1, 1, 0, 1, 0],
                          [1, 1, 1, 1, 0],
                          [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert dtm.first_divergent_token(match).tolist() == [5, 0, 2, 4, 0]
    torch.testing.assert_close(dtm.share_of_divergent_tokens(match), torch.tensor([0.0, 0.2, 0.4, 0.2, 1.0]))
    nll = torch.tensor([[0.5] * 5, [1.0] * 5, [1.5] * 5, [2.0] * 5, [2.5] * 5])
    result = DivergenceResult.from_match(match, nll)
    assert result.fdt_mean == pytest.approx(11 / 5)
    assert result.fdt_quantile(0.25) == 0 and result.fdt_quantile(0.5) == 2 and result.fdt_quantile(0.75) == 4
    assert result.fdt_score(0.75) == pytest.approx(80.0)
    assert result.sdt_mean == pytest.approx(0.36)
    assert result.perplexity == pytest.approx(math.exp(1.5))
    assert set(result.summary()) == {"fdt_mean", "fdt25", "fdt50", "fdt75", "sdt", "perplexity"}


def test_quantiles_interpolate_between_order_statistics():
    result = DivergenceResult(torch.tensor([0, 10]), torch.zeros(2), torch.zeros(2), 10)
    assert result.fdt_quantile(0.75) == pytest.approx(7.5)


@pytest.mark.parametrize("q, error", [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                      ("0.5", TypeError), (True, TypeError)])
def test_bad_quantiles_name_q(q, error):
    result = DivergenceResult(torch.tensor([0, 10]), torch.zeros(2), torch.zeros(2), 10)
    with pytest.raises(error, match="q"):
        result.fdt_quantile(q)
    with pytest.raises(error, match="q"):
        result.fdt_score(q)


def test_numpy_quantiles_are_numbers():
    import numpy as np

    result = DivergenceResult(torch.tensor([0, 10]), torch.zeros(2), torch.zeros(2), 10)
    assert result.fdt_quantile(np.float32(0.75)) == pytest.approx(7.5)


def test_score_runs_in_eval_mode_whatever_the_models_mode(prompts):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.5)
    llama = transformers.LlamaForCausalLM(config)  # in train mode: dropout would make every score random
    references = dtm.reference_continuations(llama, prompts, 6, 2, use_disk_cache=False)
    result = dtm.score(llama, references)
    assert result.fdt.tolist() == [6] * len(prompts) and llama.training


def test_score_counts_divergence_of_a_perturbed_model(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 12, 2, cache_dir=tmp_path)
    with torch.no_grad():
        model.head.weight.mul_(-1)  # reverses the order of the logits: greedy tokens now lose
    result = dtm.score(model, references)
    assert result.fdt.tolist() == [0] * 5 and result.sdt.tolist() == [1.0] * 5


def test_bad_input(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 4, 2, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="match"):
        dtm.first_divergent_token(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="match"):
        dtm.share_of_divergent_tokens(torch.ones(3, 0, dtype=torch.bool))
    with pytest.raises(TypeError, match="references"):
        dtm.score(model, prompts)
    other = CausalLM(65, DecoderConfig(dim=32, num_layers=2, num_heads=4))
    with pytest.raises(ValueError, match="vocabulary has 65 tokens.*64"):
        dtm.score(other, references)
    with torch.no_grad():
        model.decoder.layers[1].mlp.w_out.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN logits"):
        dtm.score(model, references)


def test_teacher_forced_fdt_equals_where_free_running_generation_diverges(model, prompts, tmp_path):
    references = dtm.reference_continuations(model, prompts, 10, 5, cache_dir=tmp_path)
    for name in ["layers.0.q", "layers.0.down", "layers.1.v", "layers.1.up"]:
        with dtm.compressed(model, name, dtm.MagnitudePruning(0.6)):
            free_running = dtm.generate(model, prompts, 10, 5)
            teacher_forced = dtm.score(model, references).fdt
        assert torch.equal(teacher_forced, dtm.first_divergent_token(free_running == references.continuations))
