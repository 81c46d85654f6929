"""RotaryEmbedding: its frequencies stay fp32 whatever the module's dtype, and load onto any device."""

import pytest
import torch

from lmkernels.nn import CausalLM, DecoderConfig
from lmkernels.nn.rotary import RotaryEmbedding


@pytest.mark.parametrize("cast", [lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()])
def test_dtype_casts_keep_the_frequencies_in_fp32(cast):
    # A bf16 frequency f puts about p * f * 2^-8 radians of error into the angle at position p: at
    # p = 100,000 the rotated vectors would be unrelated to the fp32 ones.
    rotary = RotaryEmbedding(64, 500000.0, interleaved=False)
    x = torch.randn(1, 4, 64)
    positions = torch.tensor([[10, 1000, 30000, 100000]])
    expected = rotary(x, positions)
    cast(rotary)
    assert rotary.inverse_frequencies.dtype == torch.float32
    torch.testing.assert_close(rotary(x.bfloat16(), positions).float(), expected, atol=0.02, rtol=0)


def test_models_cast_to_bf16_rotate_as_in_fp32():
    model = CausalLM(256, DecoderConfig(dim=32, num_layers=1, num_heads=2)).to(torch.bfloat16)
    buffers = [b for name, b in model.named_buffers() if name.endswith("inverse_frequencies")]
    assert buffers and all(b.dtype == torch.float32 for b in buffers)


def test_frequencies_follow_the_device_and_materialise_after_meta():
    with torch.device("meta"):
        rotary = RotaryEmbedding(16)
    assert rotary.inverse_frequencies.is_meta
    rotary.materialize()
    torch.testing.assert_close(rotary.inverse_frequencies, RotaryEmbedding(16).inverse_frequencies, rtol=0, atol=0)
    assert RotaryEmbedding(16, device="meta").inverse_frequencies.is_meta
    assert CausalLM(256, DecoderConfig(dim=32, num_layers=1, num_heads=2), device="meta").decoder.layers[0] \
        .attention.rotary.inverse_frequencies.is_meta


@pytest.mark.parametrize("assign", [False, True])
def test_a_meta_model_loaded_from_a_checkpoint_gives_the_trained_model(assign):
    # to_empty leaves the frequencies uninitialised memory, and load_state_dict(assign=True) sets only what
    # the checkpoint holds: either way the frequencies are computed again.
    config = DecoderConfig(dim=32, num_layers=1, num_heads=2)
    torch.manual_seed(0)
    trained = CausalLM(11, config)
    with torch.device("meta"):
        model = CausalLM(11, config)
    if not assign:
        model.to_empty(device="cpu")
    model.load_state_dict(trained.state_dict(), assign=assign)
    tokens = torch.randint(11, (2, 7))
    torch.testing.assert_close(model(tokens), trained(tokens), rtol=0, atol=0)
    assert model.decoder.layers[0].attention.rotary.inverse_frequencies.device.type == "cpu"


def test_reset_parameters_recomputes_the_frequencies():
    rotary = RotaryEmbedding(16)
    rotary.inverse_frequencies.fill_(float("nan"))
    rotary.reset_parameters()
    torch.testing.assert_close(rotary.inverse_frequencies, RotaryEmbedding(16).inverse_frequencies, rtol=0, atol=0)


def test_repr_shows_the_sizes():
    assert repr(RotaryEmbedding(16)) == "RotaryEmbedding(16, base=10000.0, interleaved=True)"
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    assert repr(RotaryEmbedding(8, 500000.0, False, scaling)) == \
        f"RotaryEmbedding(8, base=500000.0, interleaved=False, scaling={scaling!r})"
