"""The ``lmk`` command line: info and the tour (the bench smoke test is in tests/bench)."""

import json
import re

from lmkernels.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"version", "cuda_built", "simd", "threads"} <= info.keys()


def test_tour_runs_and_learns(capsys):
    assert main(["tour"]) == 0
    out = capsys.readouterr().out
    assert "max |ours - torch|: forward 0.00e+00" in out
    accuracy, majority = map(float, re.search(r"held-out accuracy ([\d.]+)% \(majority class: ([\d.]+)%\)", out).groups())
    assert accuracy > majority + 30
    assert "join(split(text)) == text" in out and "T-FREE embedding + head" in out
    first, last = map(float, re.search(r"held-out loss: step \d+: ([\d.]+),.* step \d+: ([\d.]+)\n", out).groups())
    assert last < 0.8 * first  # the T-FREE model learns
    assert "FDT(F, F) = 32 (no divergence" in out
    umup = re.findall(r"training loss ([\d.]+) -> ([\d.]+), held-out ([\d.]+) after", out)
    assert len(umup) == 2  # u-muP in fp32, then with its hidden linears in FP8
    (fp32_first, _, fp32_heldout), (_, _, fp8_heldout) = [tuple(map(float, run)) for run in umup]
    assert fp32_heldout < 0.7 * fp32_first and abs(fp8_heldout - fp32_heldout) < 0.05 * fp32_heldout
    ranked_first = int(re.search(r"the queried pair ranks first in (\d+) of 16 probes", out).group(1))
    assert ranked_first >= 14  # AtMan finds the token the recall model's answer rests on
