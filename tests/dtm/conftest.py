"""A tiny lmkernels CausalLM, a tiny Hugging Face Llama and ragged prompts for the DTM tests."""

import pytest
import torch

from lmkernels.nn import CausalLM, DecoderConfig

VOCAB = 64


@pytest.fixture
def model():
    torch.manual_seed(0)
    return CausalLM(VOCAB, DecoderConfig(dim=32, num_layers=2, num_heads=4)).eval()


@pytest.fixture
def prompts():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(VOCAB, (n,), generator=generator) for n in (5, 1, 8, 3, 6)]


@pytest.fixture
def llama():
    import transformers  # a test dependency (the ``test`` extra)

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return transformers.LlamaForCausalLM(config).eval()
