// Bindings of csrc/sparse: import the arguments, check them, release the GIL, dispatch on device.
#include <pybind11/pybind11.h>

#include "bindings/families.h"
#include "bindings/tensor_import.h"
#include "sparse/embedding_bag.h"

namespace py = pybind11;

namespace lmk::bindings {
namespace {

using sparse::BagMode;
using sparse::Bags;

Bags import_bags(TensorImports& in, py::handle indices, py::handle offsets, py::handle weights, int mode) {
  return Bags{in.require(indices, "indices"), in.require(offsets, "offsets"), in.optional(weights, "per_sample_weights"),
              BagMode(mode)};
}

void embedding_bag_forward(py::handle table, py::handle indices, py::handle offsets, py::handle weights, int mode,
                           py::handle out, py::handle error_flag, uintptr_t stream) {
  TensorImports in;
  const TensorView t = in.require(table, "table");
  const Bags bags = import_bags(in, indices, offsets, weights, mode);
  const TensorView o = in.require(out, "out");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  sparse::check_forward(t, bags, o);
  require_error_flag(flag, t);
  py::gil_scoped_release release;
  if (t.device == DeviceType::CPU) return sparse::forward_cpu(t, bags, o);
#ifdef LMK_WITH_CUDA
  sparse::forward_cuda(t, bags, o, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void embedding_bag_sort_positions(py::handle indices, int64_t rows, py::handle sorted_positions, py::handle row_starts,
                                  py::handle workspace, py::handle error_flag, uintptr_t stream) {
  TensorImports in;
  const TensorView i = in.require(indices, "indices");
  const TensorView p = in.require(sorted_positions, "sorted_positions");
  const TensorView s = in.require(row_starts, "row_starts");
  const OptionalView w = in.optional(workspace, "workspace");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  if (i.device == DeviceType::CPU) {
    py::gil_scoped_release release;
    return sparse::sort_positions_by_row_cpu(i, rows, p, s);
  }
  sparse::check_sort_positions(i, rows, p, s, w);
  require_error_flag(flag, i);
  py::gil_scoped_release release;
#ifdef LMK_WITH_CUDA
  sparse::sort_positions_by_row_cuda(i, rows, p, s, *w, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void embedding_bag_backward_table(py::handle grad_out, py::handle indices, py::handle offsets, py::handle weights,
                                  int mode, py::handle sorted_positions, py::handle segment_starts,
                                  py::handle grad_table, py::handle error_flag, uintptr_t stream) {
  TensorImports in;
  const TensorView g = in.require(grad_out, "grad_out");
  const Bags bags = import_bags(in, indices, offsets, weights, mode);
  const TensorView p = in.require(sorted_positions, "sorted_positions");
  const TensorView s = in.require(segment_starts, "segment_starts");
  const TensorView o = in.require(grad_table, "grad_table");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  sparse::check_backward_table(g, bags, p, s, o);
  require_error_flag(flag, g);
  py::gil_scoped_release release;
  if (g.device == DeviceType::CPU) return sparse::backward_table_cpu(g, bags, p, s, o);
#ifdef LMK_WITH_CUDA
  sparse::backward_table_cuda(g, bags, p, s, o, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

void embedding_bag_backward_weights(py::handle grad_out, py::handle table, py::handle indices, py::handle offsets,
                                    int mode, py::handle grad_weights, py::handle error_flag, uintptr_t stream) {
  TensorImports in;
  const TensorView g = in.require(grad_out, "grad_out");
  const TensorView t = in.require(table, "table");
  const Bags bags = import_bags(in, indices, offsets, py::none(), mode);
  const TensorView o = in.require(grad_weights, "grad_weights");
  const OptionalView flag = in.optional(error_flag, "error_flag");
  sparse::check_backward_weights(g, t, bags, o);
  require_error_flag(flag, t);
  py::gil_scoped_release release;
  if (t.device == DeviceType::CPU) return sparse::backward_weights_cpu(g, t, bags, o);
#ifdef LMK_WITH_CUDA
  sparse::backward_weights_cuda(g, t, bags, o, *flag, reinterpret_cast<void*>(stream));
#else
  (void)stream;
#endif
}

}  // namespace

void register_sparse(py::module_& m) {
  m.attr("BAG_BAD_INDEX") = sparse::kBadIndex;
  m.attr("BAG_BAD_OFFSETS") = sparse::kBadOffsets;
  m.def("embedding_bag_forward", &embedding_bag_forward, py::arg("table"), py::arg("indices"), py::arg("offsets"),
        py::arg("per_sample_weights"), py::arg("mode"), py::arg("out"), py::arg("error_flag") = py::none(),
        py::arg("stream") = 0,
        "out[b] = sum (mode 0) or mean (mode 1) over i in [offsets[b], offsets[b+1]) of w_i * table[indices[i]].");
  m.def("embedding_bag_sort_positions", &embedding_bag_sort_positions, py::arg("indices"), py::arg("rows"),
        py::arg("sorted_positions"), py::arg("row_starts"), py::arg("workspace") = py::none(),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "Positions sorted stably by index, with the CSR start of each row (on the GPU: a radix sort in "
        "`workspace`, int64 [embedding_bag_sort_workspace_size(len(indices))]).");
  m.def("embedding_bag_sort_workspace_size", &sparse::sort_positions_workspace_size, py::arg("num_indices"),
        "Entries of the int64 workspace of embedding_bag_sort_positions on the GPU.");
  m.def("embedding_bag_backward_table", &embedding_bag_backward_table, py::arg("grad_out"), py::arg("indices"),
        py::arg("offsets"), py::arg("per_sample_weights"), py::arg("mode"), py::arg("sorted_positions"),
        py::arg("segment_starts"), py::arg("grad_table"), py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "grad_table[s] = sum over the positions of segment s of scale * w * grad_out[bag].");
  m.def("embedding_bag_backward_weights", &embedding_bag_backward_weights, py::arg("grad_out"), py::arg("table"),
        py::arg("indices"), py::arg("offsets"), py::arg("mode"), py::arg("grad_weights"),
        py::arg("error_flag") = py::none(), py::arg("stream") = 0,
        "grad_weights[i] = scale * <grad_out[bag(i)], table[indices[i]]>.");
}

}  // namespace lmk::bindings
