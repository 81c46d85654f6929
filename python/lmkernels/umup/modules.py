"""Unit-scaled modules (u-muP): the layers of ``unit_scaling`` 0.3.5 with the u-muP hyperparameters and FP8.

Every weight is initialised N(0, 1), biases 0, norm gains 1: the scale lives in the ops, not in
the weights. Parameters carry u-muP tags (``lmkernels.umup.parameter``) for the optimiser rules.
Parameter names equal unit-scaling's, so state dicts move between the two libraries.

Hyperparameters (all 1 by default; u-muP's claim is that they transfer across widths):

    attn_mult            attention logit multiplier: softmax(attn_mult q k^T / d_head)
    act_mult             SwiGLU gate multiplier: x g sigmoid(act_mult g)
    residual_mult        residual branches against the embedding (the tau rule)
    residual_attn_ratio  attention branches against MLP branches (the tau rule)
    loss_mult            logit multiplier inside the loss (forward only)

FP8 (``fp8`` of ``Linear``; ``set_fp8`` for a whole model): a linear layer with ``fp8=True`` runs
its three GEMMs in FP8 (``lmkernels.umup.fp8``); one with ``bf16=True`` runs them in bf16 (operands
rounded to bf16, fp32 accumulation, the output back in the input's dtype). The scheme ``"partial"``
(the u-muP paper's large runs, specs/umup_dtm.md 2.2) puts every hidden linear in FP8 except the
"critical" ones, attention-out and FFN-down, whose inputs can grow suddenly during training: those
run in bf16. ``"all"`` puts them in FP8 too; ``"off"`` leaves every linear in the model's dtype.
The readout and the embedding always stay in the model's dtype.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

import lmkernels.umup.functional as U
from lmkernels.umup.fp8 import fp8_linear
from lmkernels.umup.parameter import TaggedModule, is_tagged, parameter

FP8_SCHEMES = ("off", "partial", "all")


class Linear(TaggedModule):
    """Unit-scaled linear layer ``y = U.linear(x, W, b)``, no bias by default.

    Precision of its three GEMMs: ``fp8`` runs them in FP8 (``lmkernels.umup.fp8.fp8_linear``);
    otherwise ``bf16`` runs them in bf16 (``U.linear`` on bf16 copies of ``x``, ``W`` and ``b``, made
    inside the forward as autocast does, so the parameters stay in their dtype and receive their
    gradients in it; the output comes back in ``x``'s dtype); otherwise they run in the operands' dtype.

    ``critical`` marks the attention-out and FFN-down projections, which ``set_fp8(model, "partial")``
    runs in bf16 rather than FP8.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None,
                 constraint: str | None = "to_output_scale", weight_mup_type: str = "weight", fp8: bool = False,
                 critical: bool = False, bf16: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.constraint, self.fp8, self.critical, self.bf16 = constraint, fp8, critical, bf16
        self.weight = parameter(torch.empty(out_features, in_features, device=device, dtype=dtype), weight_mup_type)
        self.bias = parameter(torch.empty(out_features, device=device, dtype=dtype), "bias") if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) weight, zero bias, as in unit-scaling."""
        with torch.no_grad():
            self.weight.normal_()
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, input: Tensor) -> Tensor:
        if self.fp8:
            return fp8_linear(input, self.weight, self.bias, self.constraint)
        if self.bf16:
            return bf16_linear(input, self.weight, self.bias, self.constraint)
        return U.linear(input, self.weight, self.bias, self.constraint)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"constraint={self.constraint!r}, fp8={self.fp8}, bf16={self.bf16}")


def bf16_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None,
                constraint: str | None = "to_output_scale") -> Tensor:
    """``U.linear`` with its three GEMMs in bf16 (the spec's "fallback BF16 path per GEMM"): ``input``,
    ``weight`` and ``bias`` are rounded to bf16, the GEMMs accumulate in fp32 and write bf16 (as torch's
    bf16 matmul does), the u-muP scales multiply the bf16 results, and the output is returned in
    ``input``'s dtype. The casts are differentiable, so each gradient arrives in its tensor's own dtype
    (bf16 values in an fp32 master weight's gradient, as under autocast)."""
    bf16 = torch.bfloat16
    output = U.linear(input.to(bf16), weight.to(bf16), None if bias is None else bias.to(bf16), constraint)
    return output.to(input.dtype)


class LinearReadout(Linear):
    """The network's output layer: ``U.linear_readout`` (the muP ``1 / fan_in`` scale), tagged ``"output"``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, device=None, dtype=None,
                 constraint: str | None = None, weight_mup_type: str = "output"):
        super().__init__(in_features, out_features, bias, device, dtype, constraint, weight_mup_type)

    def forward(self, input: Tensor) -> Tensor:
        return U.linear_readout(input, self.weight, self.bias, self.constraint)


class Embedding(TaggedModule):
    """Unit-scaled embedding: an N(0, 1) table [V, d] looked up with ``U.embedding``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, device=None,
                 dtype=None):
        super().__init__()
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx: expected an index in [-{num_embeddings}, {num_embeddings}), "
                                 f"got {padding_idx}")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.weight = parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype), "weight")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 1) entries; the padding row zero (it gets no gradient, so it stays so), as in torch and unit-scaling."""
        with torch.no_grad():
            self.weight.normal_()
            if self.padding_idx is not None:
                self.weight[self.padding_idx].zero_()

    def forward(self, input: Tensor) -> Tensor:
        return U.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}"


class RMSNorm(TaggedModule):
    """Unit-scaled RMS normalisation over the trailing ``normalized_shape``; no gain by default (u-muP)."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = False):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.weight = parameter(torch.empty(self.normalized_shape), "norm") if elementwise_affine else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)

    def forward(self, input: Tensor) -> Tensor:
        return U.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class MLP(torch.nn.Module):
    """SwiGLU MLP ``linear_2(U.silu_glu(linear_1(x), linear_gate(x), act_mult))``, all three linears unconstrained.

    Unconstrained is safe here: the forward and backward scales mirror each other along the branch.
    ``linear_2`` (FFN-down) is a critical layer (bf16 under the partial FP8 scheme).
    """

    def __init__(self, hidden_size: int, expansion_factor: int = 4, act_mult: float = 1.0):
        super().__init__()
        intermediate_size = hidden_size * expansion_factor
        self.act_mult = act_mult
        self.linear_1 = Linear(hidden_size, intermediate_size, constraint=None)
        self.linear_gate = Linear(hidden_size, intermediate_size, constraint=None)
        self.linear_2 = Linear(intermediate_size, hidden_size, constraint=None, critical=True)

    def forward(self, input: Tensor) -> Tensor:
        return self.linear_2(U.silu_glu(self.linear_1(input), self.linear_gate(input), self.act_mult))


class MHSA(torch.nn.Module):
    """Multi-head self-attention: fused ``linear_qkv``, ``U.scaled_dot_product_attention`` (``mult`` = attn_mult),
    ``linear_o`` (attention-out, a critical layer: bf16 under the partial FP8 scheme).
    Input and output [batch, seq, hidden]. ``dropout_p`` drops attention weights in training mode
    only (unit-scaling's ``MHSA`` drops them in eval mode too); ``S`` keeps its ``sqrt(1 - p)`` in both."""

    def __init__(self, hidden_size: int, heads: int, is_causal: bool, dropout_p: float = 0.0, mult: float = 1.0):
        super().__init__()
        if heads <= 0 or hidden_size % heads:
            raise ValueError(f"heads: expected a positive divisor of hidden_size {hidden_size}, got {heads}")
        self.heads, self.is_causal, self.dropout_p, self.mult = heads, is_causal, dropout_p, mult
        self.linear_qkv = Linear(hidden_size, 3 * hidden_size)
        self.linear_o = Linear(hidden_size, hidden_size, critical=True)

    def forward(self, input: Tensor) -> Tensor:
        q, k, v = self.project_qkv(input)
        attended = U.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=self.is_causal,
                                                  mult=self.mult, training=self.training)
        return self.project_output(attended)

    def project_qkv(self, input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [batch, heads, seq, head_dim] of ``input`` [batch, seq, hidden]."""
        batch, seq, hidden = input.shape
        qkv = self.linear_qkv(input).view(batch, seq, 3, self.heads, hidden // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def project_output(self, attended: Tensor) -> Tensor:
        """``linear_o`` of the heads' outputs [batch, heads, seq, head_dim], as [batch, seq, hidden]."""
        batch, heads, seq, head_dim = attended.shape
        return self.linear_o(attended.transpose(1, 2).reshape(batch, seq, heads * head_dim))


class TransformerLayer(torch.nn.Module):
    """Pre-norm block, the norm inside each residual branch::

        r, s = residual_split(x, mhsa_tau);  x = residual_add(dropout(mhsa(norm(r))), s, mhsa_tau)
        r, s = residual_split(x, mlp_tau);   x = residual_add(dropout(mlp(norm(r))), s, mlp_tau)
    """

    def __init__(self, hidden_size: int, heads: int, mhsa_tau: float, mlp_tau: float, is_causal: bool,
                 dropout_p: float = 0.0, attn_mult: float = 1.0, act_mult: float = 1.0, expansion_factor: int = 4):
        super().__init__()
        self.dropout_p, self.mhsa_tau, self.mlp_tau = dropout_p, mhsa_tau, mlp_tau
        self.mhsa_norm = RMSNorm(hidden_size)
        self.mhsa = MHSA(hidden_size, heads, is_causal=is_causal, dropout_p=dropout_p, mult=attn_mult)
        self.mlp_norm = RMSNorm(hidden_size)
        self.mlp = MLP(hidden_size, expansion_factor, act_mult)

    def forward(self, input: Tensor) -> Tensor:
        residual, skip = U.residual_split(input, self.mhsa_tau)
        residual = U.dropout(self.mhsa(self.mhsa_norm(residual)), self.dropout_p, self.training)
        input = U.residual_add(residual, skip, self.mhsa_tau)
        residual, skip = U.residual_split(input, self.mlp_tau)
        residual = U.dropout(self.mlp(self.mlp_norm(residual)), self.dropout_p, self.training)
        return U.residual_add(residual, skip, self.mlp_tau)


class DepthSequential(torch.nn.Sequential):
    """A ``Sequential`` whose parameters all get ``mup_scaling_depth = len(self)`` (their LR scales with depth^-1/2)."""

    def __init__(self, *modules: torch.nn.Module):
        super().__init__(*modules)
        for name, param in self.named_parameters():
            if not is_tagged(param):
                raise ValueError(f"modules: parameter {name} has no u-muP tags (a plain torch module?)")
            if param.mup_scaling_depth is not None:
                raise ValueError(f"modules: parameter {name} is already in a depth-scaled container")
            param.mup_scaling_depth = len(self)

    def __getitem__(self, idx):
        return _sequential_item(self, idx)


class TransformerStack(DepthSequential):
    """``layers`` transformer layers; layer i gets ``mhsa_tau = rule(2i, 2 layers)`` and
    ``mlp_tau = rule(2i + 1, 2 layers)``.

    ``residual_scaling`` defaults to ``transformer_residual_scaling_rule(residual_mult, residual_attn_ratio)``.
    Other keyword arguments go to ``TransformerLayer``.
    """

    def __init__(self, layers: int, residual_scaling=None, residual_mult: float = 1.0,
                 residual_attn_ratio: float = 1.0, **layer_arguments):
        rule = residual_scaling or U.transformer_residual_scaling_rule(residual_mult, residual_attn_ratio)
        super().__init__(*(TransformerLayer(**layer_arguments, mhsa_tau=rule(2 * i, 2 * layers),
                                            mlp_tau=rule(2 * i + 1, 2 * layers)) for i in range(layers)))


class TransformerDecoder(torch.nn.Sequential):
    """Decoder-only LM: ``Embedding`` -> ``TransformerStack`` (causal) -> ``RMSNorm`` -> ``LinearReadout``.

    ``forward(ids)`` gives logits [batch, seq, vocab]; ``loss(ids)`` the unit-scaled next-token cross
    entropy (``U.cross_entropy`` with ``mult = loss_mult``, logits in fp32). No positional encoding,
    like unit-scaling's demonstration model: causal attention alone tells positions apart.
    """

    def __init__(self, hidden_size: int, vocab_size: int, layers: int, heads: int, dropout_p: float = 0.0,
                 residual_scaling=None, *, attn_mult: float = 1.0, act_mult: float = 1.0, residual_mult: float = 1.0,
                 residual_attn_ratio: float = 1.0, loss_mult: float = 1.0, expansion_factor: int = 4,
                 fp8: str = "off"):
        super().__init__()
        self.loss_mult = loss_mult
        self.embedding = Embedding(vocab_size, hidden_size)
        self.layers = TransformerStack(layers, residual_scaling, residual_mult, residual_attn_ratio,
                                       hidden_size=hidden_size, heads=heads, is_causal=True, dropout_p=dropout_p,
                                       attn_mult=attn_mult, act_mult=act_mult, expansion_factor=expansion_factor)
        self.final_norm = RMSNorm(hidden_size)
        self.projection = LinearReadout(hidden_size, vocab_size)
        set_fp8(self, fp8)

    def __getitem__(self, idx):
        return _sequential_item(self, idx)

    def loss(self, input_ids: Tensor) -> Tensor:
        """Mean next-token cross entropy of ``input_ids`` [batch, seq] (unit-scaled gradients)."""
        logits = self(input_ids).float()
        return U.cross_entropy(logits[..., :-1, :].flatten(end_dim=-2), input_ids[..., 1:].flatten(),
                               mult=self.loss_mult)


def _sequential_item(sequential: torch.nn.Sequential, idx):
    # torch's Sequential builds a slice as self.__class__(OrderedDict), which these constructors do not
    # take; a plain Sequential of the same (already tagged) modules keeps their tags and names.
    if isinstance(idx, slice):
        return torch.nn.Sequential(OrderedDict(list(sequential._modules.items())[idx]))
    return torch.nn.Sequential.__getitem__(sequential, idx)


def set_fp8(model: torch.nn.Module, scheme: str) -> torch.nn.Module:
    """Set the precision of the hidden ``Linear`` layers of ``model``. Returns ``model``.

        "off"       every hidden linear in the model's dtype
        "partial"   FP8, except the critical attention-out and FFN-down layers, which run in bf16
        "all"       every hidden linear in FP8

    The readout (``LinearReadout``) keeps the model's dtype in every scheme."""
    if scheme not in FP8_SCHEMES:
        raise ValueError(f"scheme (fp8): expected one of {', '.join(FP8_SCHEMES)}; got {scheme!r}")
    for module in model.modules():
        if isinstance(module, Linear) and not isinstance(module, LinearReadout):
            module.fp8 = scheme == "all" or (scheme == "partial" and not module.critical)
            module.bf16 = scheme == "partial" and module.critical
    return model
