// One registration function per kernel family, each defined in that family's binding file.
#pragma once
#include <pybind11/pybind11.h>

namespace lmk::bindings {

void register_sparse(pybind11::module_& m);
void register_text_words(pybind11::module_& m);
void register_text_patterns(pybind11::module_& m);
void register_multilabel_bce(pybind11::module_& m);
void register_dictionary_score(pybind11::module_& m);
void register_text_encode(pybind11::module_& m);
void register_divergence(pybind11::module_& m);
void register_quant(pybind11::module_& m);
void register_fp8(pybind11::module_& m);
void register_fp8_gemm(pybind11::module_& m);
void register_word_connector(pybind11::module_& m);
void register_hat_split(pybind11::module_& m);
void register_attention(pybind11::module_& m);
void register_memory_cache(pybind11::module_& m);

}  // namespace lmk::bindings
