"""The Python examples of the user-facing docs run as written, and their claimed outputs hold.

Every ```python block of README.md and of each docs/*.md (except docs/benchmarks.md, a record of
measurements) runs in order in one namespace per file, as a reader pasting the blocks one after the
other would; one test case per file. A block that uses CUDA is skipped, with the reason, only where no
GPU is visible; nothing else is skipped. Text that is not meant to run (shell sessions, output,
pseudo-code) belongs in ```bash or ```text fences, never in ```python ones.

The docs leave a few names to the reader (``texts``, ``model``, ``prompts``, ...). ``PRELUDES`` gives
each a small, real value, built from the English text the package embeds (``lmkernels.data``); each
prelude's docstring says what its names stand for.

Outputs that examples claim in comments (``# ['Hello', '<|2<-ws->|>', 'world', '!']``) are asserted
where they are cheap to check: each entry of ``CLAIMS`` names a statement of a doc and an expression
that holds right after that statement ran (``_`` is the statement's value), and every entry must find
its statement.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# A record of measurements, not a guide.
NOT_GUIDES = {"docs/benchmarks.md"}


@dataclass(frozen=True)
class Block:
    doc: str
    first_line: int  # the doc's line number of the block's first line of code
    source: str

    @property
    def needs_cuda(self) -> bool:
        return re.search(r"\bcuda\b", self.source) is not None


def python_blocks(doc: str) -> list[Block]:
    blocks, lines = [], (ROOT / doc).read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number + 1
        elif start is not None and line.strip() == "```":
            blocks.append(Block(doc, start, "\n".join(lines[start - 1:number - 1]) + "\n"))
            start = None
    assert start is None, f"{doc}: the ```python block opened on line {start - 1} is never closed"
    return blocks


def documents_with_examples() -> list[str]:
    docs = ["README.md"] + sorted(f"docs/{path.name}" for path in (ROOT / "docs").glob("*.md"))
    return [doc for doc in docs if doc not in NOT_GUIDES and python_blocks(doc)]


# ---------------------------------------------------------------------------------------------------
# Names the docs leave to the reader


def english_sentences(count: int = 300) -> list[str]:
    """``count`` distinct short English sentences of the embedded corpus (the docstrings of standard
    library modules): plain prose of 5 to 20 words, spread over the whole corpus."""
    from lmkernels import data

    sentences = []
    for paragraph in data.paragraphs(data.text("train"), one_line=True):
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            if re.fullmatch(r"[A-Z][A-Za-z ,;'-]+[a-z][.!?]", sentence) and 5 <= len(sentence.split()) <= 20:
                sentences.append(sentence)
    distinct = list(dict.fromkeys(sentences))
    assert len(distinct) >= count
    return distinct[:: len(distinct) // count][:count]


def readme_prelude() -> dict:
    """``texts``: the reader's corpus; ``vocab_size`` and ``ids``: the u-μP example's vocabulary and a
    batch of token ids [4, 64] in it (the corpus's UTF-8 bytes)."""
    texts = english_sentences()
    stream = torch.tensor(list(" ".join(texts).encode("utf-8")))
    return {"texts": texts, "vocab_size": 256, "ids": stream[: 4 * 64].reshape(4, 64)}


def atman_prelude() -> dict:
    """``model`` and ``encoder``: tiny random Hugging Face models, a Llama causal LM and a BERT encoder,
    with ``tokenizer``, a fast byte-level BPE tokenizer trained on the corpus (no download);
    ``document`` and ``query``: corpus sentences for the encoder; ``texts``: the corpus;
    ``tfree_tokenizer`` and ``tfree_model``: the released T-FREE hash space and a small random
    ``TFreeLM`` in it; ``umup_decoder``: a small random byte-level u-μP decoder (V = 256)."""
    from tokenizers import Tokenizer as BPETokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lmkernels import umup
    from lmkernels.nn import DecoderConfig
    from lmkernels.tfree import TFreeConfig, TFreeLM, Tokenizer

    texts = english_sentences()
    bpe = BPETokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
    tiny = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=128)
    return {"model": LlamaForCausalLM(LlamaConfig(**tiny)).eval(), "tokenizer": tokenizer,
            "encoder": BertModel(BertConfig(**tiny), add_pooling_layer=False).eval(),
            "document": " ".join(texts[:3]), "query": texts[1], "texts": texts,
            "tfree_tokenizer": Tokenizer(vocab_size=32000, m=10, k_lowercase=2),
            "tfree_model": TFreeLM(TFreeConfig(32000, 10, 2, DecoderConfig(dim=32, num_layers=2, num_heads=4))),
            "umup_decoder": umup.TransformerDecoder(32, 256, layers=2, heads=2)}


def dtm_prelude() -> dict:
    """``model``: a small random byte-level ``CausalLM`` (V = 256); ``prompts``: the first 24 bytes of
    8 corpus sentences; ``token_stream``: the corpus's bytes; ``my_batches`` and ``my_loss``: the
    reader's own data (4 batches of 8 random windows of 33 bytes) and loss (next-byte cross-entropy)."""
    from lmkernels.nn import CausalLM, DecoderConfig

    texts = english_sentences()
    token_stream = torch.tensor(list("\n".join(texts).encode("utf-8")))

    def my_batches():
        starts = torch.randint(0, len(token_stream) - 33, (4, 8))
        return [token_stream[batch_starts[:, None] + torch.arange(33)] for batch_starts in starts]

    def my_loss(model, batch):
        logits = model(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    return {"model": CausalLM(256, DecoderConfig(dim=32, num_layers=2, num_heads=4)),
            "prompts": [torch.tensor(list(text.encode("utf-8")[:24])) for text in texts[:8]],
            "token_stream": token_stream, "my_batches": my_batches, "my_loss": my_loss}


PRELUDES = {"README.md": readme_prelude, "docs/atman.md": atman_prelude, "docs/dtm.md": dtm_prelude}


# ---------------------------------------------------------------------------------------------------
# Outputs the examples claim


@dataclass(frozen=True)
class Claim:
    doc: str
    statement: str  # how the statement starts in the doc, exactly
    holds: str  # true right after the statement ran; ``_`` is its value (None for a non-expression)


CLAIMS = [
    # README.md
    Claim("README.md", 'out = embedding_bag(table, indices, offsets, mode="sum")', "out.shape == (4096, 1024)"),
    Claim("README.md", "print(lmkernels.info())",
          '{"version", "cuda_available", "simd", "threads"} <= lmkernels.info().keys()'),
    Claim("README.md", "lmkernels.set_memory_cache_limit(1 << 30)", "lmkernels.memory_cache_limit() == 1 << 30"),
    Claim("README.md", 'tokenizer.split("Hello  world!")',
          "_ == ['Hello', '<|2<-ws->|>', 'world', '!'] and tokenizer.join(_) == 'Hello  world!'"),
    Claim("README.md", 'tokenizer.word_pattern("Hello")', "len(_) == 5 and all(len(set(row)) == 10 for row in _)"),
    Claim("README.md", "batch = tokenizer.encode_training(texts[:16], seq_len=32)",
          "batch.loss_weights.shape == (16, 32)"),
    Claim("README.md", 'split("Hello, world!")', "_ == ['Hello,', ' world!']"),
    Claim("README.md", 'split_with_limit("verylongword", 10)', "_ == [b'verylongwo', b'rd']"),
    Claim("README.md", "batch = split_batch(texts, max_bytes=100)",
          "batch.bytes.dtype == torch.uint8 and batch.word_offsets.dtype == torch.int64 and len(batch) == len(texts)"),
    Claim("README.md", 'HATRuleSplitter().encode("Hi there!<|eot_id|>")', "_ == [[72, 105], list(b' there!'), [192]]"),
    Claim("README.md", "import lmkernels.umup.functional as U",
          "all(hasattr(U, name) for name in ('linear', 'silu_glu', 'scaled_dot_product_attention'))"),
    Claim("README.md", 'model = umup.TransformerDecoder(256, vocab_size, layers=4, heads=4, fp8="partial")',
          "all(abs(float(p.detach().std()) - 1) < 0.05 for p in model.parameters() if p.dim() == 2)"),
    # docs/tfree.md
    Claim("docs/tfree.md", 'words = tokenizer.split("Hello  world!")',
          "words == ['Hello', '<|2<-ws->|>', 'world', '!']"),
    Claim("docs/tfree.md", 'tokenizer.word_pattern("Hello")', "len(_) == 5 and all(len(row) == 10 for row in _)"),
    Claim("docs/tfree.md", 'TFreeLM(config, device="meta").parameter_counts()',
          '_["embedding"] == _["head"] == 131_072_000'),
    Claim("docs/tfree.md", "patterns.rows_computed", "_ == 5"),
    Claim("docs/tfree.md", 'tokenizer = Tokenizer(patterns=TrigramPatterns.load("patterns.bin"))',
          "(tokenizer.vocab_size, tokenizer.m) == (32000, 10)"),
    Claim("docs/tfree.md", "batch.loss_weights", "_.tolist() == [[0, 0, 0, 1, 1, 1]]"),
    Claim("docs/tfree.md", "decoder.scores(logits, edge_weight=0.8).shape",
          "_ == (2, 22) and decoder.words[16:] == ['the', 'cat', 'sat', 'on', 'mat', '.']"),
    Claim("docs/tfree.md", 'decoder.top(logits, k=3, variant="mean")',
          "len(_) == 2 and all(len(best) == 3 and all(word in decoder.words for word, log_p in best) for best in _)"),
    Claim("docs/tfree.md", 'decoder.add(["zebra", "the"])', "_ == 1 and decoder.words[-1] == 'zebra'"),
    # docs/hat.md
    Claim("docs/hat.md", 'split("howAreYou, ok")', "_ == ['how', 'Are', 'You,', ' ok']"),
    Claim("docs/hat.md", 'split_with_limit("für", 2)', "_ == [b'f', b'\\xc3\\xbc', b'r']"),
    Claim("docs/hat.md", "splitter = HATRuleSplitter()",
          "splitter.special_tokens == {'<|eot_id|>': 192} and splitter.max_word_size == 100"),
    Claim("docs/hat.md", 'splitter.encode("Hi there!<|eot_id|>")',
          "_ == [[72, 105], [32, 116, 104, 101, 114, 101, 33], [192]]"),
    Claim("docs/hat.md", "batch.words(1)", "_ == [b'a', b'\\xc0', b'b']"),
    Claim("docs/hat.md", "loss = hat_loss(model(packed), packed)",
          "model(packed).shape == (20, 256) and loss.dim() == 0"),
    Claim("docs/hat.md", "words = word_attention(q, k, v, word_cu)", "words.shape == (3, 4, 16)"),
    # docs/atman.md
    Claim("docs/atman.md", 'e = explain(model, "The capital of France is", " Paris"',
          "len(e.units) == 5 and ''.join(unit.label for unit in e.units) == 'The capital of France is'"),
    Claim("docs/atman.md", "[u.label for u in e.units if u.in_target]",
          "_ == [e.target.piece(i) for i in range(len(e.target) - 1)]"),
    Claim("docs/atman.md", "e.top(3, token=-1)", "len(_) == 3"),
    Claim("docs/atman.md", 'e = explain(umup_decoder, "The cat sat on the mat.", " Zzz.")',
          "e.prompt.ids == tuple(b'The cat sat on the mat.')"),
    # docs/dtm.md
    Claim("docs/dtm.md", "refs = dtm.reference_continuations(model, prompts, num_tokens=100)",
          "any(dtm.default_cache_dir().iterdir())"),
    Claim("docs/dtm.md", "dtm.score(candidate, refs).summary()",
          "set(_) == {'fdt_mean', 'fdt25', 'fdt50', 'fdt75', 'sdt', 'perplexity'} and _['fdt_mean'] == 100"),
    Claim("docs/dtm.md", 'dtm.component_sweep(model, refs, dtm.MagnitudePruning(0.5), output="sweep.csv")',
          "Path('sweep.csv').is_file()"),
    Claim("docs/dtm.md", 'plan = dtm.sparsify(copy.deepcopy(model), 0.5, refs, method="fdt")',
          "abs(plan.global_sparsity - 0.5) < 1e-3"),
    Claim("docs/dtm.md", "norms = dtm.input_norms(model, refs)",
          "all(norm.dtype == torch.float32 and norm.dim() == 1 for norm in norms.values())"),
    Claim("docs/dtm.md", "plan = dtm.sparsify(copy.deepcopy(model), 0.7, refs, recover=",
          "abs(plan.global_sparsity - 0.7) < 1e-3"),
]


# ---------------------------------------------------------------------------------------------------


def run_block(block: Block, namespace: dict, claims: list[Claim], checked: set[Claim]) -> None:
    """Run ``block`` one top-level statement at a time, checking the claims about each right after it.
    Compiled under the doc's path and line numbers, so that a traceback shows the doc's lines."""
    tree = ast.parse(block.source)
    ast.increment_lineno(tree, block.first_line - 1)
    doc_source = "\n" * (block.first_line - 1) + block.source
    filename = str(ROOT / block.doc)
    for statement in tree.body:
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), filename, "eval"), namespace)
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), filename, "exec"), namespace)
            value = None
        text = ast.get_source_segment(doc_source, statement)
        for claim in claims:
            if text.startswith(claim.statement):
                assert eval(claim.holds, {"Path": Path, "torch": torch, **namespace, "_": value}), (
                    f"{block.doc}:{statement.lineno}: the claimed output does not hold: {claim.holds}")
                checked.add(claim)


@pytest.fixture
def restore_memory_cache_limit():
    import lmkernels

    limit = lmkernels.memory_cache_limit()
    yield
    lmkernels.set_memory_cache_limit(limit)


@pytest.mark.parametrize("doc", documents_with_examples())
def test_python_examples_run(doc, tmp_path, monkeypatch, restore_memory_cache_limit):
    monkeypatch.chdir(tmp_path)  # the examples write files (patterns.bin, atman.png, sweep.csv)
    monkeypatch.setenv("LMK_CACHE_DIR", str(tmp_path / "cache"))
    namespace = PRELUDES.get(doc, dict)()
    claims = [claim for claim in CLAIMS if claim.doc == doc]
    checked: set[Claim] = set()
    skipped = []
    for block in python_blocks(doc):
        if block.needs_cuda and not torch.cuda.is_available():
            skipped.append(block.first_line)
            continue
        run_block(block, namespace, claims, checked)
    assert checked == set(claims), f"claims about statements that {doc} does not have: {set(claims) - checked}"
    if skipped:
        pytest.skip(f"{doc}: the blocks from lines {skipped} use CUDA, and no GPU is visible")


def test_every_claim_is_about_a_document_with_examples():
    assert {claim.doc for claim in CLAIMS} <= set(documents_with_examples())
