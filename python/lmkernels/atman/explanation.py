"""``Explanation``: the result of an AtMan run, its scores, and its renderings (JSON, HTML, heatmap)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

from torch import Tensor

from lmkernels.atman.scoring import scores
from lmkernels.atman.tokens import Tokens
from lmkernels.atman.units import Unit


@dataclass
class Explanation:
    """Per-unit and per-target-token relevance of the explained ``prompt``'s ``units``.

    ``relevance`` [N, T] is the raw R (positive = the unit supports the target token); ``clean`` [T]
    the unperturbed value of the explained ``quantity`` (cross-entropy per target token, or the
    similarity); ``token_scores`` [N, T] and ``unit_scores`` [N] apply ``postprocessing`` and
    ``normalize`` (``lmkernels.atman.scoring``). ``target``: the target's tokens where the quantity
    has them (``explain``); units with ``in_target`` lie in it, at positions ``len(prompt)`` on.
    """

    prompt: Tokens
    targets: list[str]
    units: list[Unit]
    relevance: Tensor
    clean: Tensor
    quantity: str
    postprocessing: str = "none"
    normalize: bool = False
    target: Tokens | None = None

    @property
    def token_scores(self) -> Tensor:
        return scores(self.relevance, self.postprocessing, self.normalize)[0]

    @property
    def unit_scores(self) -> Tensor:
        return scores(self.relevance, self.postprocessing, self.normalize)[1]

    def top(self, k: int = 5, token: int | None = None) -> list[tuple[Unit, float]]:
        """The ``k`` units of highest score, best first: unit scores, or the token scores of target token
        ``token`` alone."""
        values = self.unit_scores if token is None else self.token_scores[:, token]
        order = values.argsort(descending=True, stable=True)[:k]
        return [(self.units[i], float(values[i])) for i in order]

    def to_dict(self) -> dict:
        return {
            "quantity": self.quantity,
            "postprocessing": self.postprocessing,
            "normalize": self.normalize,
            "prompt_length": len(self.prompt),
            "targets": self.targets,
            "clean": self.clean.tolist(),
            "units": [{"label": unit.label, "positions": list(unit.positions), "in_target": unit.in_target,
                       "score": float(score), "token_scores": token_scores.tolist(), "relevance": relevance.tolist()}
                      for unit, score, token_scores, relevance
                      in zip(self.units, self.unit_scores, self.token_scores, self.relevance)],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_html(self) -> str:
        """The prompt and the explained target, every unit highlighted in its own text by its score: red
        supports, blue opposes, white is 0.

        The opacity is |score| / max |score| over all units (prompt and target alike); the score shows
        on hover. Text outside every unit (special tokens aside) is shown plain.
        """
        values = [float(value) for value in self.unit_scores]
        scale = max(map(abs, values), default=0.0) or 1.0
        scored = list(zip(self.units, values))
        prompt = _highlighted(self.prompt, 0, [(u, v) for u, v in scored if not u.in_target], scale)
        if self.target is None:
            target = html.escape("".join(self.targets))
        else:
            target = _highlighted(self.target, len(self.prompt), [(u, v) for u, v in scored if u.in_target], scale)
        return (f'<div class="lmk-atman"><p>{prompt}</p>'
                f'<p><b>explained ({html.escape(self.quantity)}):</b> {target}</p></div>')

    def plot(self, path: str | None = None):
        """A heatmap of ``token_scores`` (units x target tokens) with matplotlib (the ``plot`` extra).

        Returns the figure; saves it to ``path`` when given.
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("Explanation.plot needs matplotlib: pip install 'lmkernels[plot]'") from error
        values = self.token_scores.numpy()
        height = max(3.0, 0.25 * len(self.units))
        figure, axes = plt.subplots(figsize=(max(4.0, 0.5 * len(self.targets) + 3), height))
        limit = float(abs(values).max()) or 1.0
        image = axes.imshow(values, aspect="auto", cmap="coolwarm", vmin=-limit, vmax=limit)
        axes.set_yticks(range(len(self.units)), [repr(unit.label)[1:-1] + " (target)" * unit.in_target
                                                 for unit in self.units], fontsize=7)
        axes.set_xticks(range(len(self.targets)), [repr(t)[1:-1] for t in self.targets], rotation=90, fontsize=7)
        axes.set_xlabel("target token")
        axes.set_ylabel("unit")
        figure.colorbar(image, ax=axes, label=f"relevance ({self.quantity})")
        if path is not None:
            figure.savefig(path, dpi=120, bbox_inches="tight")
        return figure


def _highlighted(tokens: Tokens, offset: int, scored: list[tuple[Unit, float]], scale: float) -> str:
    """HTML of ``tokens`` (at positions ``offset`` on in the explained input) with each scored unit marked."""
    pieces = []
    if tokens.text is None:  # token pieces in order, a unit's pieces joined in one mark
        unit_at = {min(unit.positions) - offset: (unit, value) for unit, value in scored}
        covered = {position - offset for unit, _ in scored for position in unit.positions}
        for index in range(len(tokens)):
            if index in unit_at:
                unit, value = unit_at[index]
                pieces.append(_mark(unit.label + " ", value, scale))
            elif index not in covered:
                pieces.append(html.escape(tokens.piece(index) + " "))
        return "".join(pieces)
    spans = []
    for unit, value in scored:
        covered = [tokens.spans[i - offset] for i in unit.positions if not tokens.special[i - offset]]
        if covered:
            spans.append((min(s for s, _ in covered), max(e for _, e in covered), value))
    cursor = 0
    for start, end, value in sorted(spans):
        start = max(start, cursor)
        pieces.append(html.escape(tokens.text[cursor:start]))
        if end > start:
            pieces.append(_mark(tokens.text[start:end], value, scale))
        cursor = max(cursor, end)
    pieces.append(html.escape(tokens.text[cursor:]))
    return "".join(pieces)


def _mark(text: str, value: float, scale: float) -> str:
    colour = "220, 40, 40" if value >= 0 else "40, 90, 220"
    alpha = min(1.0, abs(value) / scale)
    return (f'<span title="{value:.4g}" style="background: rgba({colour}, {alpha:.3f})">'
            f"{html.escape(text)}</span>")
