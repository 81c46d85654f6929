"""AtMan explanation cases: ``lmkernels.atman.explain`` against the official algorithm and Captum.

A small Llama-style ``lmkernels.nn.CausalLM`` (random weights, seeded; Llama-2's 32000-token
vocabulary), a random prompt of P tokens and a target of T tokens; every prompt token is a unit
(factor 0.1). Case names read ``explain P=<P> T=<T> <layers>x<dim>``.

- **official algorithm** (the research code's ``Explainer``): one full forward per unit at batch 1
  with a dense [1, 1, S, S] factor tensor on the pre-softmax scores (multiplicative with the row
  minimum over all keys, then the causal mask at -10000), full [S, V] logits. It runs every
  ``peer_every``-th unit and is scaled up (label ``xK``).
- **Captum** ``LLMAttribution(FeatureAblation)`` (optional peer: ``pip install captum``): each unit
  is ablated to token 0, one episode per unit at ``perturbations_per_eval=1``; in its default
  ``forward_in_tokens`` mode an episode scores the target one token at a time (T forwards, without a
  KV cache here: the model is not a transformers ``GenerationMixin``). Its sequence mode
  (``forward_in_tokens=False``) scores the whole target in one teacher-forced forward per episode,
  its fastest form. Both sampled and scaled like the official algorithm.
- **memory**: ours against a single clean forward at batch 1 (``model(tokens)``), a case of its
  own whose record holds both peaks (CUDA's allocator statistics; on the CPU the live tensors'
  peak, ``lmkernels.bench.tensor_memory``), as does ``peak_memory_ratio``.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import torch

from lmkernels.atman import explain
from lmkernels.atman.scoring import token_losses
from lmkernels.bench.harness import Case
from lmkernels.bench.tensor_memory import peak_tensor_bytes
from lmkernels.nn import CausalLM, DecoderConfig

_FULL = {"prompt": 512, "target": 16, "dim": 128, "layers": 2, "heads": 4, "vocab": 32000, "peer_every": 32}
_QUICK = {"prompt": 96, "target": 8, "dim": 128, "layers": 2, "heads": 4, "vocab": 32000, "peer_every": 32}
_TINY = {"prompt": 12, "target": 3, "dim": 16, "layers": 1, "heads": 2, "vocab": 64, "peer_every": 4}
FACTOR = 0.1


def cases(quick: bool, device: str, tiny: bool = False) -> list[Case]:
    """The explanation cases on ``device``: full, ``quick`` or ``tiny`` (smoke test) sizes."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    name = f"explain P={sizes['prompt']} T={sizes['target']} {sizes['layers']}x{sizes['dim']}"
    every = sizes["peer_every"]
    subject = functools.cache(lambda: setup(sizes, device))

    def ours():
        model, prompt, target = subject()
        return explain(model, prompt, target, factor=FACTOR)

    def official():
        model, prompt, target = subject()
        return official_relevance(model, prompt, target, range(0, len(prompt), every))

    def captum(sequence_mode: bool):
        model, prompt, target = subject()
        return captum_relevance(model, prompt, target, range(0, len(prompt), every), sequence_mode)

    def clean_forward():
        model, prompt, target = subject()
        with torch.no_grad():
            return model(torch.cat([prompt, target[:-1]])[None])

    units = sizes["prompt"]
    sampled = len(range(0, units, every))
    scale = (units + 1) / (sampled + 1)
    result = [Case("atman_explain", name, f"official algorithm (dense SxS, batch 1; {sampled + 1} of {units + 1} "
                   f"passes, x{scale:.3g})", ours, official, None, device, peer_scale=scale)]
    result.append(Case("atman_explain", name + " memory", "single clean forward, batch 1", ours, clean_forward,
                       None, device, memory_on_cpu=True))
    if _has_captum():
        result[1:1] = [Case("atman_explain", name, f"captum FeatureAblation ({mode} mode; {sampled + 1} of "
                            f"{units + 1} episodes, x{scale:.3g})", ours, functools.partial(captum, mode == "sequence"),
                            None, device, peer_scale=scale) for mode in ("token", "sequence")]
    return result


def setup(sizes: dict, device: str) -> tuple[CausalLM, torch.Tensor, torch.Tensor]:
    """The model and the prompt and target token ids of a case."""
    torch.manual_seed(0)
    config = DecoderConfig(dim=sizes["dim"], num_layers=sizes["layers"], num_heads=sizes["heads"])
    model = CausalLM(sizes["vocab"], config).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, sizes["vocab"], (sizes["prompt"] + sizes["target"],), generator=generator)
    return model, tokens[:sizes["prompt"]].to(device), tokens[sizes["prompt"]:].to(device)


@torch.no_grad()
def official_relevance(model: CausalLM, prompt: torch.Tensor, target: torch.Tensor, units, factor: float = FACTOR):
    """R [len(units), T] for single-token ``units`` by the research code's algorithm (see the module)."""
    ids = torch.cat([prompt, target[:-1]])[None]
    length = ids.shape[1]
    rows = slice(len(prompt) - 1, length)
    clean = token_losses(_dense_forward(model, ids, torch.ones(1, 1, length, length, device=ids.device))[0, rows],
                         target)
    relevance = []
    for unit in units:
        factors = torch.ones(1, 1, length, length, device=ids.device)
        factors[..., unit] = factor
        logits = _dense_forward(model, ids, factors)
        relevance.append(token_losses(logits[0, rows], target) - clean)
    return torch.stack(relevance)


def _dense_forward(model: CausalLM, ids: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``model``'s forward with the research code's dense attention manipulation; logits [B, S, V]."""
    x = model.embedding(ids)
    length = ids.shape[1]
    positions = torch.arange(length, device=ids.device).expand_as(ids)
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    for layer in model.decoder.layers:
        attention = layer.attention
        h = layer.attention_norm(x)
        q, k, v = (projection(h).unflatten(-1, (-1, attention.head_dim)).transpose(1, 2)
                   for projection in (attention.q_proj, attention.k_proj, attention.v_proj))
        q, k = attention.rotary(q, positions[:, None]), attention.rotary(k, positions[:, None])
        group = attention.num_heads // attention.num_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2)
        row_min = scores.amin(dim=-1, keepdim=True)
        scores = (scores - row_min) * factors / math.sqrt(attention.head_dim)
        scores = scores.masked_fill(~causal, -10000.0).clamp_min(-10000.0)
        out = torch.softmax(scores, dim=-1) @ v
        x = x + attention.o_proj(out.transpose(1, 2).flatten(2))
        x = x + layer.mlp(layer.mlp_norm(x))
    return model.head(model.decoder.norm(x))


def _has_captum() -> bool:
    try:
        import captum  # noqa: F401
    except ImportError:
        return False
    return True


class _IdTokenizer:
    """What Captum asks of a tokenizer, for text that is token ids separated by spaces."""

    def encode(self, text: str, return_tensors=None, add_special_tokens=True):
        ids = [int(piece) for piece in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def __call__(self, text: str, return_offsets_mapping=False, add_special_tokens=True):
        starts = [0] + [i + 1 for i, character in enumerate(text) if character == " "]
        ids = [int(piece) for piece in text.split(" ")]
        spans = [(start, start + len(str(i))) for start, i in zip(starts, ids)]
        return {"input_ids": ids, "offset_mapping": spans}

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


class _HFStyle(torch.nn.Module):
    """``model`` behind the Hugging Face call convention Captum uses: ``forward(input_ids, ...).logits``."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    def forward(self, input_ids, attention_mask=None, use_cache=False, **_):
        return SimpleNamespace(logits=self.model(input_ids))


@torch.no_grad()
def captum_relevance(model: CausalLM, prompt: torch.Tensor, target: torch.Tensor, units,
                     sequence_mode: bool = False) -> torch.Tensor:
    """Captum's per-target-token attributions [T, len(units)] (log-prob drop when a unit is ablated);
    ``sequence_mode``: the whole target scored in one forward per episode."""
    from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput

    units = list(units)
    pieces = [str(int(token)) for token in prompt]
    # Explained tokens are template features, the others fixed text: one episode per explained token.
    template = " ".join("{}" if i in units else piece.replace("{", "{{") for i, piece in enumerate(pieces))
    attribution = LLMAttribution(FeatureAblation(_HFStyle(model)), _IdTokenizer())
    values = [pieces[i] for i in units]
    inp = TextTemplateInput(template, values=values, baselines=["0"] * len(values))
    return attribution.attribute(inp, target=target.cpu(), use_cached_outputs=False,
                                 forward_in_tokens=not sequence_mode).token_attr


def peak_memory_ratio(quick: bool = False, device: str = "cpu", tiny: bool = False) -> dict:
    """Peak intermediate-tensor memory (MiB) of ``explain`` and of one clean forward at batch 1, and their ratio."""
    sizes = _TINY if tiny else _QUICK if quick else _FULL
    model, prompt, target = setup(sizes, device)

    def clean_forward():
        with torch.no_grad():
            return model(torch.cat([prompt, target[:-1]])[None])

    ours = peak_tensor_bytes(lambda: explain(model, prompt, target, factor=FACTOR)) / 2**20
    clean = peak_tensor_bytes(clean_forward) / 2**20
    return {"explain_mib": ours, "clean_forward_mib": clean, "ratio": ours / clean}


def main(argv: list[str] | None = None) -> int:
    """One timed run of each side (the peers on their samples, scaled) and the memory ratio: the
    full case takes minutes where ``lmk bench``'s repeats would take an hour on a small CPU."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for case in cases(args.quick, args.device):
        case.ours_fn()  # builds the model and warms up
        seconds = []
        for fn in (case.ours_fn, case.peer_fn):
            start = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - start)
        ours, peer = seconds[0], seconds[1] * case.peer_scale
        print(f"{case.case} | ours {ours:.2f} s | {case.peer} {peer:.2f} s | {peer / ours:.2f}x", flush=True)
    record = peak_memory_ratio(args.quick, args.device)
    print(f"peak memory: explain {record['explain_mib']:.1f} MiB, one clean forward at batch 1 "
          f"{record['clean_forward_mib']:.1f} MiB: {record['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
