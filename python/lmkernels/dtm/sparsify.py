"""Divergence-guided compression plans: per-component sparsity (``sparsify``) and int8 (``int8_plan``).

``sparsify(model, target, prompts, method="fdt")`` prunes the model's components (magnitude
pruning, or Wanda-style with ``criterion="wanda"``) until their parameter-weighted sparsity is
``target``, in ``iterations`` steps, each adding ``t`` = (what remains) / (steps left). One step,
for the model ``m`` as it stands (the algorithm of Deiseroth et al. 2023, v3; our reading of it,
see ``docs`` of the spec):

1. Curves: for every component ``c`` with current sparsity ``s_c``, score ``m`` with only ``c``
   pruned further by ``t/2`` and by ``3t/2`` (capped at ``1 - s_c``). The curve of ``c`` maps the added
   sparsity to the score: ``0 -> 100``, ``t/2 -> measured``, ``3t/2 -> measured``, ``1 - s_c -> 0``
   (everything pruned), linear in between.
2. Threshold: for ``f = 100, 100 - threshold_step, ...``: every component gets the largest added
   sparsity at which its curve is still ``>= f``; stop at the first ``f`` at which the
   parameter-weighted mean of these reaches ``t``.
3. With ``interpolate=True`` (default) the allocation is blended linearly between that ``f`` and the
   one before, so that the step adds exactly ``t`` (all methods then compare at equal sparsity);
   with ``interpolate=False`` it is taken at ``f`` as in the paper (it may overshoot ``t``).
4. Every component is pruned to ``s_c +`` its allocation.
5. With ``recover``: ``recover(model, masks)`` trains the pruned model (see
   ``lmkernels.dtm.recovery``), after which the pruned weights are zeroed again.

The pruning criterion (``criterion``) is used for the probes of step 1 and the pruning of step 4
alike: ``"magnitude"`` (``magnitude_prune``) or ``"wanda"`` (``wanda_prune``, with the input norms of
every component gathered at the start of each step from the model as it stands, over the
teacher-forced pass of the step's probes: the prompts and the continuations they are scored against;
for ``"uniform"``, which probes nothing, the references).

Scores (higher is better, 100 = unchanged): ``method="fdt"`` uses ``100 * quantile_q(FDT) / N``
(``q = quantile``, default 0.75: "FDT75"); ``method="perplexity"`` uses ``100 * ppl(m) / ppl(m')``
(clamped to [0, 100]) for perplexity on the reference continuations; ``method="uniform"``
measures nothing and adds ``t`` to every component. There is no recovery training between steps
unless ``recover`` is given.

What the probes are scored against (``probe_reference``): ``"initial"`` (default) takes the
reference continuations of the model as it was when ``sparsify`` was called, at every step;
``"current"`` takes the greedy continuations of ``m`` as it stands at the start of each step
(generated afresh, same prompts, N and batches). Only ``"current"`` makes the curve's anchor
``0 -> 100`` true after the first step (``FDT(m, m) = N``): against the initial references ``m``
itself already diverges early once it is pruned, so every probe of ``m`` measures mostly ``m``'s
own divergence, the curves of all components drop to about the same value and stop telling them
apart. The perplexity score is a ratio to ``ppl(m)`` and so is relative to ``m`` either way. The
final ``result`` is always scored against the initial references.

``int8_plan(model, budget, prompts)`` scores int8 absmax quantisation of every component alone
and converts components in order of least divergence (highest FDT score, then highest mean FDT,
then lowest SDT) while the converted parameters stay within ``budget`` (a fraction of all
component parameters).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from lmkernels.dtm.components import bind, compressed, select
from lmkernels.dtm.compression import (CRITERIA, Int8Absmax, MagnitudePruning, WandaPruning, input_norms, int8_absmax,
                                       sparsity_of)
from lmkernels.dtm.continuations import References, reference_continuations
from lmkernels.dtm.metrics import DivergenceResult, check_quantile, score
from lmkernels.dtm.recovery import apply_masks, keep_masks
from lmkernels.dtm.sweep import ProgressBar, SweepTable, component_sweep

METHODS = ("fdt", "perplexity", "uniform")
PROBE_REFERENCES = ("initial", "current")


def largest_sparsity_above(xs: Sequence[float], ys: Sequence[float], threshold: float) -> float:
    """The largest ``x`` at which the piecewise-linear curve through ``(xs, ys)`` is ``>= threshold``
    (``xs`` increasing; ``xs[0]`` when no point reaches the threshold)."""
    for j in range(len(xs) - 1, 0, -1):
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        if y1 >= threshold:
            return x1
        if y0 >= threshold:
            return x0 + (x1 - x0) * (y0 - threshold) / (y0 - y1)
    return xs[0]


def allocate(curves: dict[str, tuple[Sequence[float], Sequence[float]]], parameters: dict[str, int],
             target: float, threshold_step: float = 1.0, interpolate: bool = True) -> tuple[dict[str, float], float]:
    """Added sparsity per component whose parameter-weighted mean is ``target``; and the threshold ``f``.

    ``curves[c] = (xs, ys)``: added sparsity -> score (0..100), ``xs`` increasing from 0 to the
    component's capacity. See steps 2 and 3 of the module docstring.
    """
    if set(curves) != set(parameters):
        raise ValueError("curves: expected one curve per component of parameters")
    if isinstance(threshold_step, bool) or not isinstance(threshold_step, (int, float)) or \
            not math.isfinite(threshold_step) or threshold_step < 1e-3:
        raise ValueError(f"threshold_step: expected a finite number >= 0.001, got {threshold_step!r}")
    total = sum(parameters.values())
    capacity = sum(parameters[c] * curves[c][0][-1] for c in curves) / total
    if not 0.0 <= target <= capacity + 1e-12:
        raise ValueError(f"target: expected an added sparsity in [0, {capacity:.4f}] (what the components can "
                         f"still lose), got {target}")

    def at(threshold: float) -> tuple[dict[str, float], float]:
        added = {c: largest_sparsity_above(*curves[c], threshold) for c in curves}
        return added, sum(parameters[c] * added[c] for c in curves) / total

    previous, previous_mean = {c: 0.0 for c in curves}, 0.0
    lowered = 0  # the threshold is 100 - lowered * threshold_step: a step below an ulp of 100 still moves it
    while True:
        threshold = 100.0 - lowered * threshold_step
        added, mean = at(max(threshold, 0.0))
        if mean >= target or threshold <= 0.0:
            break
        previous, previous_mean = added, mean
        lowered += 1
    if interpolate and mean > previous_mean:
        weight = (target - previous_mean) / (mean - previous_mean)
        added = {c: previous[c] + weight * (added[c] - previous[c]) for c in curves}
    return added, max(threshold, 0.0)


@dataclass
class SparsityPlan:
    """What ``sparsify`` did: the final sparsity per component, the global (parameter-weighted)
    sparsity, one record per step (its added target, threshold, global sparsity and the FDT score
    of the model after it, recovery included, against the initial references), and the final
    model's scores on the references."""

    method: str
    target: float
    sparsity: dict[str, float]
    global_sparsity: float
    steps: list[dict] = field(default_factory=list)
    result: DivergenceResult | None = None
    criterion: str = "magnitude"


def _uniform(added_target: float, sparsity: dict[str, float], parameters: dict[str, int]) -> dict[str, float]:
    """The same added sparsity t for every component, those that fill up (at most 1) taking what they
    can, with t raised so that the parameter-weighted mean is ``added_target`` (water-filling)."""
    if all(1.0 - s >= added_target for s in sparsity.values()):
        return {c: added_target for c in sparsity}
    need, remaining, level = added_target * sum(parameters.values()), sum(parameters.values()), 1.0
    for c in sorted(sparsity, key=lambda c: 1.0 - sparsity[c]):
        room = 1.0 - sparsity[c]
        if room * remaining >= need:
            level = need / remaining
            break
        need -= room * parameters[c]
        remaining -= parameters[c]
    return {c: min(level, 1.0 - sparsity[c]) for c in sparsity}


def global_sparsity(model: torch.nn.Module, components: Iterable[str] | None = None) -> float:
    """Parameter-weighted sparsity (fraction of exact zeros) over the components."""
    weights = select(model, components)
    return sum(float((w == 0).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())


@torch.no_grad()
def sparsify(model: torch.nn.Module, target: float, prompts, method: str = "fdt", iterations: int = 4,
             quantile: float = 0.75, threshold_step: float = 1.0, interpolate: bool = True,
             components: Iterable[str] | None = None, num_tokens: int = 100, batch_size: int = 16,
             probe_reference: str = "initial", criterion: str = "magnitude", recover=None, progress: bool = True,
             **reference_options) -> SparsityPlan:
    """Prune ``model`` in place to the global ``target`` sparsity over its components (see the module docstring).

    ``prompts`` are token id sequences or the model's ``References``; ``components`` restricts the
    plan to some canonical names (default: all). ``criterion``: ``"magnitude"`` or ``"wanda"``.
    ``recover``: None or a callable ``recover(model, masks)`` run after every step's pruning, e.g.
    ``RecoveryTraining(token_stream, steps=200)`` (``lmkernels.dtm.recovery``).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion: expected one of {CRITERIA}, got {criterion!r}")
    if recover is not None and not callable(recover):
        raise TypeError(f"recover: expected None or a callable recover(model, masks), got {type(recover).__name__}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target <= 1.0:
        raise ValueError(f"target: expected a sparsity in [0, 1], got {target!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations: expected an int >= 1, got {iterations!r}")
    check_quantile(quantile)
    if probe_reference not in PROBE_REFERENCES:
        raise ValueError(f"probe_reference: expected one of {PROBE_REFERENCES}, got {probe_reference!r}")
    weights = select(model, components)
    names = list(weights)
    parameters = {c: weights[c].numel() for c in names}
    references = prompts if isinstance(prompts, References) else reference_continuations(
        model, prompts, num_tokens, batch_size, **reference_options)
    plan = SparsityPlan(method, float(target), {}, global_sparsity(model, names), criterion=criterion)
    if target < plan.global_sparsity:
        raise ValueError(f"target: {target} is below the components' current sparsity {plan.global_sparsity:.4f}")
    for step in range(iterations):
        sparsity = {c: sparsity_of(weights[c]) for c in names}
        current = sum(parameters[c] * sparsity[c] for c in names) / sum(parameters.values())
        added_target = (target - current) / (iterations - step)
        if added_target <= 0:
            break
        probes = references if probe_reference == "initial" or method == "uniform" else reference_continuations(
            model, references.prompts, references.num_tokens, references.batch_size, use_disk_cache=False)
        norms = input_norms(model, probes, names) if criterion == "wanda" else None
        if method == "uniform":
            added = _uniform(added_target, sparsity, parameters)
            threshold = None
        else:
            curves = _curves(model, probes, weights, sparsity, added_target, method, quantile, norms,
                             f"sparsify step {step + 1}/{iterations}" if progress else None)
            added, threshold = allocate(curves, parameters, added_target, threshold_step, interpolate)
        zeros = _whole_zeros({c: min(sparsity[c] + added[c], 1.0) * parameters[c] for c in names}, parameters)
        for c in names:
            weights[c].copy_(bind(_pruning(zeros[c] / parameters[c], norms), c)(weights[c]))
        if recover is not None:
            masks = keep_masks(model, names)
            was_training = model.training
            try:
                with torch.enable_grad():  # sparsify itself runs without autograd; the training loop needs it
                    recover(model, masks)
            finally:
                model.train(was_training)
            apply_masks(model, masks)
        plan.steps.append({"step": step + 1, "added_target": added_target, "threshold": threshold,
                           "global_sparsity": global_sparsity(model, names),
                           "fdt_score": score(model, references).fdt_score(quantile)})
    plan.sparsity = {c: sparsity_of(weights[c]) for c in names}
    plan.global_sparsity = global_sparsity(model, names)
    plan.result = score(model, references)
    return plan


def _whole_zeros(goal: dict[str, float], parameters: dict[str, int]) -> dict[str, int]:
    """Whole zero counts for the real-valued ``goal`` counts: each rounded, then, where the rounded
    counts fall short of the goal's total rounded up (they can by up to half a weight per component),
    one more where the most was rounded away."""
    counts = {c: min(round(wanted), parameters[c]) for c, wanted in goal.items()}
    total = min(math.ceil(sum(goal.values()) - 1e-6), sum(parameters.values()))
    open_components = sorted((c for c in goal if counts[c] < parameters[c]), key=lambda c: counts[c] - goal[c])
    for c in open_components[:max(0, total - sum(counts.values()))]:
        counts[c] += 1
    return counts


def _pruning(sparsity: float, norms: dict | None) -> MagnitudePruning | WandaPruning:
    """Magnitude pruning without norms, Wanda-style pruning with them."""
    return MagnitudePruning(sparsity) if norms is None else WandaPruning(sparsity, norms)


def _curves(model, references, weights, sparsity, added_target, method, quantile, norms, title):
    baseline = score(model, references).perplexity if method == "perplexity" else None
    bar = ProgressBar(len(weights), title) if title else None
    curves = {}
    for c, weight in weights.items():
        capacity = 1.0 - sparsity[c]
        xs, ys = [0.0], [100.0]
        for added in (added_target / 2, 3 * added_target / 2):
            added = min(added, capacity)
            if added <= xs[-1]:
                continue
            with compressed(model, c, _pruning(sparsity[c] + added, norms)):
                result = score(model, references)
            xs.append(added)
            ys.append(result.fdt_score(quantile) if method == "fdt"
                      else min(100.0, 100.0 * baseline / result.perplexity))
        if capacity > xs[-1]:
            xs.append(capacity)
            ys.append(0.0)
        curves[c] = (xs, ys)
        if bar:
            bar.advance(c)
    return curves


@dataclass
class Int8Plan:
    """The components ranked by the divergence int8 causes (least first), those converted, the
    fraction of component parameters converted, the sweep behind it and the scores after conversion."""

    order: list[str]
    converted: list[str]
    converted_fraction: float
    sweep: SweepTable
    result: DivergenceResult | None = None


@torch.no_grad()
def int8_plan(model: torch.nn.Module, budget: float, prompts, quantile: float = 0.75, apply: bool = True,
              components: Iterable[str] | None = None, num_tokens: int = 100, batch_size: int = 16,
              progress: bool = True, **reference_options) -> Int8Plan:
    """Rank components by the divergence int8 absmax causes and convert the least divergent ones
    while the converted parameters stay within ``budget`` (a fraction in [0, 1]); in place when ``apply``."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget: expected a fraction of the component parameters in [0, 1], got {budget!r}")
    check_quantile(quantile)
    weights = select(model, components)
    references = prompts if isinstance(prompts, References) else reference_continuations(
        model, prompts, num_tokens, batch_size, **reference_options)
    sweep = component_sweep(model, references, Int8Absmax(), list(weights), progress=progress)
    results = sweep.results
    order = sorted(weights, key=lambda c: (-results[c].fdt_score(quantile), -results[c].fdt_mean,
                                           results[c].sdt_mean))
    total = sum(w.numel() for w in weights.values())
    converted, used = [], 0
    for c in order:
        if used + weights[c].numel() > budget * total * (1 + 1e-12):  # 0.29 * 100 is 28.999...
            break
        converted.append(c)
        used += weights[c].numel()
    plan = Int8Plan(order, converted, used / total, sweep)
    if apply:
        for c in converted:
            weights[c].copy_(int8_absmax(weights[c]))
        plan.result = score(model, references)
    return plan
