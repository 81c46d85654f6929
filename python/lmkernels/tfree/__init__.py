"""T-FREE (Deiseroth et al. 2024): tokenizer-free word-level language models over trigram patterns.

    tokenizer = Tokenizer(vocab_size=32000, m=10, k_lowercase=2)
    words = tokenizer.split("Hello  world!")        # ['Hello', '<|2<-ws->|>', 'world', '!']
    batch = tokenizer.encode_training(texts, seq_len=256)
    model = TFreeLM(TFreeConfig(...)); loss = model.loss(batch)
    text = generate(model, tokenizer, Decoder(tokenizer, build_dictionary(tokenizer, texts)), "Once upon")
"""

from lmkernels.tfree.decoding import SPECIAL_WORDS, Decoder, build_dictionary
from lmkernels.tfree.encoding import Encoding, TrainingBatch
from lmkernels.tfree.generate import generate
from lmkernels.tfree.model import TFreeConfig, TFreeEmbedding, TFreeHead, TFreeLM, tfree_loss
from lmkernels.tfree.patterns import TrigramPatterns
from lmkernels.tfree.tokenizer import Tokenizer
from lmkernels.tfree.words import join_words, split_words

__all__ = ["SPECIAL_WORDS", "Decoder", "Encoding", "TFreeConfig", "TFreeEmbedding", "TFreeHead", "TFreeLM",
           "Tokenizer", "TrainingBatch", "TrigramPatterns", "build_dictionary", "generate", "join_words",
           "split_words", "tfree_loss"]
