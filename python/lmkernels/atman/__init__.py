"""AtMan (Deiseroth et al. 2023): explain a model's output by suppressing attention to parts of its input.

    explanation = explain(model, "The capital of France is", " Paris", units="word")
    explanation.top(3); explanation.to_html(); explanation.plot("atman.png"); explanation.to_json()
    explain_similarity(encoder, document, query, tokenizer=tokenizer)     # which document tokens match

One clean pass plus one suppressed pass per unit, batched; causal models reuse the clean keys/values
before each unit (exactly). Models: lmkernels' ``nn.CausalLM``, ``tfree.TFreeLM`` and
``umup.TransformerDecoder``, Hugging Face causal LMs (Llama, GPT-2 families) and encoders (BERT
family). ``lmk explain`` runs it on embedded defaults.
"""

from lmkernels.atman.explain import explain, explain_similarity
from lmkernels.atman.explanation import Explanation
from lmkernels.atman.models import LMKernelsCausalLM, TFreeCausalLM, adapter_for
from lmkernels.atman.scoring import POSTPROCESSING
from lmkernels.atman.suppression import FORMS, Suppression
from lmkernels.atman.tokens import Tokens
from lmkernels.atman.umup import UMuPCausalLM
from lmkernels.atman.units import GRANULARITIES, Unit, build_units

__all__ = ["FORMS", "GRANULARITIES", "POSTPROCESSING", "Explanation", "LMKernelsCausalLM", "Suppression",
           "TFreeCausalLM", "Tokens", "UMuPCausalLM", "Unit", "adapter_for", "build_units", "explain",
           "explain_similarity"]
