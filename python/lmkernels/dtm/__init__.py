"""Divergent Token Metrics (Deiseroth et al. 2023): score compressed models by where and how often
their greedy tokens leave the base model's, per component, and plan compressions with it.

    refs  = reference_continuations(model, prompts, num_tokens=100)   # greedy, KV cache, disk cache
    score(compressed_model, refs).summary()                          # FDT mean/25/50/75, SDT, perplexity
    component_sweep(model, refs, MagnitudePruning(0.5), output="sweep.csv")
    sparsify(model, 0.5, refs, method="fdt")                           # FDT-guided per-component sparsity
    sparsify(model, 0.7, refs, criterion="wanda", recover=RecoveryTraining(tokens, steps=200))
    int8_plan(model, 0.8, refs)                                        # int8 in order of least divergence

Models: ``lmkernels.nn.CausalLM`` or Hugging Face Llama-style causal LMs. Components are named
``layers.{i}.{q,k,v,o,gate,up,down}``. ``lmk dtm`` runs the reference experiment.
"""

from lmkernels.dtm.components import (KINDS, bind, component_modules, components, compressed, parameter_counts,
                                      select)
from lmkernels.dtm.compression import (CRITERIA, Int8Absmax, MagnitudePruning, WandaPruning, input_norms, int8_absmax,
                                       magnitude_prune, sparsity_of, wanda_prune)
from lmkernels.dtm.continuations import References, default_cache_dir, generate, reference_continuations
from lmkernels.dtm.metrics import DivergenceResult, first_divergent_token, score, share_of_divergent_tokens
from lmkernels.dtm.recovery import RecoveryTraining, apply_masks, keep_masks
from lmkernels.dtm.sparsify import (METHODS, PROBE_REFERENCES, Int8Plan, SparsityPlan, allocate, global_sparsity,
                                    int8_plan, largest_sparsity_above, sparsify)
from lmkernels.dtm.sweep import SweepTable, component_sweep

__all__ = ["CRITERIA", "KINDS", "METHODS", "PROBE_REFERENCES", "DivergenceResult", "Int8Absmax", "Int8Plan",
           "MagnitudePruning", "RecoveryTraining", "References", "SparsityPlan", "SweepTable", "WandaPruning",
           "allocate", "apply_masks", "bind", "component_modules", "component_sweep", "components", "compressed",
           "default_cache_dir", "first_divergent_token", "generate", "global_sparsity", "input_norms", "int8_absmax",
           "int8_plan", "keep_masks", "largest_sparsity_above", "magnitude_prune", "parameter_counts",
           "reference_continuations", "score", "select", "share_of_divergent_tokens", "sparsify", "sparsity_of",
           "wanda_prune"]
