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
    optima = dict(re.findall(r"best learning rate per width, (.+?): .* \(moves by (\d+) octaves\)", out))
    assert optima["u-muP"] == "0" and int(optima["standard parametrisation (SP)"]) >= 2  # u-muP's optimum transfers
    fp8, fp32 = map(float, re.search(r"final training loss \(mean of the last \d+ steps\) ([\d.]+) against ([\d.]+) in fp32",
                                     out).groups())
    assert abs(fp8 - fp32) < 0.05 * fp32  # the FP8 run tracks its fp32 twin
    ranked_first = int(re.search(r"the queried pair ranks first in (\d+) of 16 probes", out).group(1))
    assert ranked_first >= 14  # AtMan finds the token the recall model's answer rests on
