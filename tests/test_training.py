"""The helpers the reference training scripts share."""

import io
import sys

from lmkernels.training import show_progress, warmup_cosine


def test_warmup_then_cosine_to_the_floor():
    factors = [warmup_cosine(step, warmup=4, steps=20) for step in range(25)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert abs(factors[20] - 0.1) < 1e-12 and factors[24] == factors[20]


def test_progress_line_ends_the_line_at_the_last_step(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    show_progress("HAT ", 1, 2, [3.0], start=0.0)
    show_progress("HAT ", 2, 2, [3.0, 1.0], start=0.0)
    text = out.getvalue()
    assert "HAT [###############...............] step 1/2  loss 3.000" in text
    assert "step 2/2  loss 2.000" in text and text.endswith("\n")
