"""One ``torch.library`` custom op (``lmk::<name>``) per kernel: argument checks, output
allocation, a fake implementation for ``torch.compile`` and, where differentiable, autograd."""

from lmkernels.ops.embedding_bag import embedding_bag

__all__ = ["embedding_bag"]
