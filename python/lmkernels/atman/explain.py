"""AtMan explanations: one clean pass, then batched perturbed passes, one per unit.

``explain`` (causal LMs) scores how much each prompt unit supports a target continuation:

    x = prompt ⊕ target[:-1]  (S = P + T - 1 tokens),  logits at positions P-1 .. S-1 predict the target
    R[u, t] = CE_t(u suppressed) - CE_t(clean)

``include_target=True`` explains the target's own input tokens too (positions P .. S-1, as the
research code does): an earlier target token can support a later one. Target token t is predicted at
row P-1+t, which cannot see keys at positions >= P+t, so R[u, t] = 0 exactly for a unit whose first
suppressed position p_u >= P+t (spec invariant 6).

Causality: rows before p_u are the clean pass's, so every unit takes the clean losses there (R = 0
exactly, not a recomputation that rounds differently) and only rows >= p_u are its own.

Prefix reuse (``prefix_reuse=True``): units are sorted by their first suppressed position p_u and
batched in that order; a batch recomputes positions min p_u .. S-1 only, reading the clean pass's
keys/values before that, and runs the LM head on the target rows it recomputed. In a causal model
nothing before p_u depends on the suppressed keys, so the result is the full recomputation's
(``prefix_reuse=False`` runs that, for checking). Target rows go through the LM head a few passes at
a time.

``explain_similarity`` (encoders) explains the cosine similarity between the mean-pooled embedding of
a document and that of a query: R[u] = cos(clean) - cos(u suppressed); the query is not perturbed.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable

import torch
from torch import Tensor

from lmkernels.atman.explanation import Explanation
from lmkernels.atman.models import adapter_for
from lmkernels.atman.scoring import check_postprocessing, token_losses
from lmkernels.atman.suppression import Suppression
from lmkernels.atman.tokens import Tokens
from lmkernels.atman.units import Unit, build_units


def explain(model, prompt, target, *, tokenizer=None, units="token", factor: float = 0.1,
            form: str = "log_additive", layers=None, factor_min: str = "causal",
            conceptual_threshold: float | None = None, postprocessing: str = "none", normalize: bool = False,
            batch_size: int = 16, batch_tokens: int | None = None, prefix_reuse: bool = True,
            include_target: bool = False) -> Explanation:
    """Explain ``target`` (text or token ids) as a continuation of ``prompt`` under causal ``model``.

    ``model``: ``lmkernels.nn.CausalLM``, ``lmkernels.tfree.TFreeLM`` (``tokenizer``: its dictionary,
    ``lmkernels.tfree.Decoder``), ``lmkernels.umup.TransformerDecoder`` or a Hugging Face causal LM
    (with its fast ``tokenizer`` for text); see ``lmkernels.atman.models``; ``units``: see ``lmkernels.atman.units``; ``factor``, ``form``, ``layers``, ``factor_min``,
    ``conceptual_threshold``: see ``lmkernels.atman.suppression``; ``postprocessing``, ``normalize``:
    see ``lmkernels.atman.scoring``. At most ``batch_size`` perturbed passes run together, and at most
    ``batch_tokens`` recomputed positions in all (one pass at least; default 4 S), which bounds a batch's
    activations to those of about four clean passes; with the LM head run on T rows instead of S, the
    peak stays near that of one clean forward. ``include_target``: units also cover the target's input
    tokens target[:-1] (``Unit.in_target``; custom spans then index prompt ⊕ target[:-1] and must not
    cross from one into the other); R[u, t] is 0 where target token t comes before unit u.
    """
    adapter = adapter_for(model, tokenizer)
    if not adapter.causal:
        raise TypeError(f"model: {type(model).__name__} is an encoder; explain an embedding similarity with "
                        "explain_similarity")
    suppression = _settings(adapter, factor, form, layers, factor_min, conceptual_threshold, postprocessing,
                            batch_size, normalize)
    for name, flag in (("include_target", include_target), ("prefix_reuse", prefix_reuse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
    prompt_tokens = _tokens(adapter, prompt, "prompt", True)
    target_tokens = _tokens(adapter, target, "target", False)
    length = len(prompt_tokens) + len(target_tokens) - 1
    _check_length(adapter, length, "prompt + target[:-1]")
    unit_list = build_units(prompt_tokens, units, target_tokens.first(len(target_tokens) - 1) if include_target
                            else None)
    device = adapter.device
    ids = torch.cat([prompt_tokens.tensor(device), target_tokens.tensor(device)[:-1]])
    targets = target_tokens.tensor(device)
    first_row = len(prompt_tokens) - 1
    rows = torch.arange(first_row, length, device=device)
    with torch.no_grad():
        factors = _factors(adapter, suppression, unit_list, ids)
        clean_hidden, clean_state = adapter.clean(ids, rows)
        clean = token_losses(adapter.logits(clean_hidden), targets)
        if not torch.isfinite(clean).all():
            raise ValueError("model: the clean pass gave non-finite logits")
        starts = _first_suppressed(factors, unit_list)
        order = sorted(range(len(unit_list)), key=starts.__getitem__)
        perturbed = clean.expand(len(unit_list), -1).clone()
        for chunk, start in _batches(order, starts if prefix_reuse else [0] * len(starts), length, batch_size,
                                     4 * length if batch_tokens is None else batch_tokens):
            arguments = suppression.attention_arguments(factors[chunk].to(device))
            skipped = max(0, start - first_row)  # target tokens predicted before the batch's start: clean
            hidden = adapter.perturbed(ids, start, arguments, rows[skipped:], clean_state)
            perturbed[chunk, skipped:] = _losses(adapter, hidden, targets[skipped:],
                                                 per_slice=max(1, length // (2 * (len(targets) - skipped))))
        # Rows before p_u are causally the clean pass's; taking them from it makes R exactly 0 there, whatever
        # the batch's start and however a recomputation of other shapes rounds.
        before_unit = rows[None, :] < torch.tensor(starts, device=device)[:, None]
        perturbed = torch.where(before_unit, clean, perturbed)
    return Explanation(prompt_tokens, [target_tokens.piece(i) for i in range(len(target_tokens))], unit_list,
                       (perturbed - clean).cpu(), clean.cpu(), "cross-entropy", postprocessing, normalize,
                       target_tokens)


def explain_similarity(model, document, query, *, tokenizer=None, units="token", factor: float = 0.1,
                       form: str = "log_additive", layers=None, factor_min: str = "causal",
                       conceptual_threshold: float | None = None, postprocessing: str = "none",
                       normalize: bool = False, batch_size: int = 16) -> Explanation:
    """Explain the cosine similarity of the mean-pooled embeddings of ``document`` and ``query`` (text or
    token ids) under encoder ``model`` (e.g. a Hugging Face BERT-family model and its fast tokenizer):
    which document units make them similar. Arguments as in ``explain``."""
    adapter = adapter_for(model, tokenizer)
    if adapter.causal:
        raise TypeError(f"model: {type(model).__name__} is a causal LM; explain a continuation with explain")
    suppression = _settings(adapter, factor, form, layers, factor_min, conceptual_threshold, postprocessing,
                            batch_size, normalize)
    document_tokens = _tokens(adapter, document, "document", True)
    query_tokens = _tokens(adapter, query, "query", True)
    _check_length(adapter, len(document_tokens), "document")
    _check_length(adapter, len(query_tokens), "query")
    unit_list = build_units(document_tokens, units, name="document")
    device = adapter.device
    ids = document_tokens.tensor(device)
    with torch.no_grad():
        factors = _factors(adapter, suppression, unit_list, ids)
        query_embedding = adapter.pooled(query_tokens.tensor(device), suppression.attention_arguments(
            torch.ones(1, len(query_tokens), device=device)))
        clean = torch.cosine_similarity(adapter.pooled(ids, suppression.attention_arguments(
            torch.ones(1, len(ids), device=device))), query_embedding)
        if not torch.isfinite(clean).all():
            raise ValueError("model: the clean pass gave non-finite embeddings")
        perturbed = torch.empty(len(unit_list), device=device)
        for first in range(0, len(unit_list), batch_size):
            chunk = list(range(first, min(first + batch_size, len(unit_list))))
            embeddings = adapter.pooled(ids, suppression.attention_arguments(factors[chunk].to(device)))
            perturbed[chunk] = torch.cosine_similarity(embeddings, query_embedding)
    return Explanation(document_tokens, ["cosine similarity"], unit_list, (clean - perturbed)[:, None].cpu(),
                       clean.cpu(), "cosine similarity", postprocessing, normalize)


def _settings(adapter, factor, form, layers, factor_min, conceptual_threshold, postprocessing,
              batch_size, normalize) -> Suppression:
    if adapter.device.type == "meta":
        raise ValueError("model: its weights are on the meta device; load or materialise them first")
    if layers is not None:
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise TypeError(f"layers: expected a sequence of layer indices or None, got {type(layers).__name__}")
        layers = tuple(operator.index(layer) if isinstance(layer, numbers.Integral) and not isinstance(layer, bool)
                       else layer for layer in layers)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    suppression = Suppression(factor, form, layers, factor_min, conceptual_threshold)
    suppression.check_layers(adapter.num_layers)
    check_postprocessing(postprocessing)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    return suppression


def _batches(order: list[int], starts: list[int], length: int, batch_size: int, batch_tokens: int):
    """(units, start) per batch: units in ``order`` (by start), at most ``batch_size`` of them and
    ``batch_tokens`` recomputed positions (length - start each, start the batch's first)."""
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, int) or batch_tokens < 1:
        raise ValueError(f"batch_tokens: expected a positive int, got {batch_tokens!r}")
    chunk: list[int] = []
    for unit in order:
        start = starts[chunk[0]] if chunk else starts[unit]
        if chunk and (len(chunk) == batch_size or (len(chunk) + 1) * (length - start) > batch_tokens):
            yield chunk, start
            chunk = []
        chunk.append(unit)
    if chunk:
        yield chunk, starts[chunk[0]]


def _tokens(adapter, text, name: str, is_prompt: bool) -> Tokens:
    tokens = adapter.tokens(text, name, is_prompt)
    if len(tokens) == 0:
        raise ValueError(f"{name}: empty (no tokens to explain)")
    if min(tokens.ids) < 0 or max(tokens.ids) >= adapter.vocab_size:
        raise IndexError(f"{name}: token ids must lie in [0, {adapter.vocab_size})")
    return tokens


def _check_length(adapter, length: int, what: str) -> None:
    if adapter.max_length is not None and length > adapter.max_length:
        raise ValueError(f"{what}: {length} tokens, more than the model's maximum of {adapter.max_length}")


def _factors(adapter, suppression: Suppression, units: list[Unit], ids: Tensor) -> Tensor:
    embeddings = adapter.embeddings(ids) if suppression.conceptual_threshold is not None else None
    return suppression.factors(units, len(ids), embeddings)


def _losses(adapter, hidden: Tensor, targets: Tensor, per_slice: int) -> Tensor:
    """Target losses [B, T] from final hidden states [B, T, dim], ``per_slice`` passes through the LM head
    at a time: their logits and log-softmax then hold at most S x V values, one clean forward's logits."""
    return torch.cat([token_losses(adapter.logits(part), targets) for part in hidden.split(per_slice)])


def _first_suppressed(factors: Tensor, units: list[Unit]) -> list[int]:
    """Per unit, the first position whose key it changes (its own first position if it changes none)."""
    changed = factors != 1
    return [int(row.nonzero()[0]) if row.any() else min(unit.positions) for row, unit in zip(changed, units)]
