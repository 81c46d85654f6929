"""Component-sweep cases: ``lmkernels.dtm.component_sweep`` against a naive per-component loop.

A byte-level ``CausalLM`` (random weights, seeded) and ``P`` random prompts of 32 tokens; each
component is pruned to 50 % in turn. Ours generates the reference continuations once (KV cache,
no disk cache) and scores every component with one teacher-forced pass per batch of 16 prompts.
The peer is the naive loop: for every component, regenerate the base model's greedy
continuations, then generate the compressed model's, and compare (FDT by free-running decoding).
The peer runs every ``peer_scale``-th component only and its time is scaled up (label ``xK``).
Case names read ``sweep <layers>x<dim> P=<prompts> N=<tokens>``.
"""

from __future__ import annotations

import torch

from lmkernels.bench.harness import Case
from lmkernels.dtm import MagnitudePruning, component_sweep, components, compressed, first_divergent_token, generate
from lmkernels.dtm import reference_continuations
from lmkernels.nn import CausalLM, DecoderConfig

_FULL = {"dim": 256, "layers": 4, "prompts": 32, "tokens": 100, "peer_every": 7}
_QUICK = {"dim": 64, "layers": 2, "prompts": 8, "tokens": 32, "peer_every": 7}
_TINY = {"dim": 16, "layers": 1, "prompts": 2, "tokens": 4, "peer_every": 7}
_PROMPT_LEN = 32
_BATCH = 16


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The component-sweep case on ``device``: full, ``quick`` or ``tiny`` (smoke test) sizes."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    torch.manual_seed(0)
    model = CausalLM(256, DecoderConfig(dim=sizes["dim"], num_layers=sizes["layers"], num_heads=4)).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(256, (_PROMPT_LEN,), generator=generator) for _ in range(sizes["prompts"])]
    tokens, every = sizes["tokens"], sizes["peer_every"]
    compression = MagnitudePruning(0.5)
    names = list(components(model))

    def ours():
        references = reference_continuations(model, prompts, tokens, _BATCH, use_disk_cache=False)
        return component_sweep(model, references, compression, progress=False)

    def naive():
        fdts = []
        for name in names[::every]:
            base = generate(model, prompts, tokens, _BATCH)
            with compressed(model, name, compression):
                candidate = generate(model, prompts, tokens, _BATCH)
            fdts.append(first_divergent_token(base == candidate))
        return fdts

    return [Case(
        kernel="dtm_sweep",
        case=f"sweep {sizes['layers']}x{sizes['dim']} P={sizes['prompts']} N={tokens}",
        peer=f"naive regenerate per component (1/{every} of them, x{every})",
        ours_fn=ours,
        peer_fn=naive,
        bytes_moved=None,
        device=device,
        peer_scale=len(names) / len(names[::every]),
    )]
