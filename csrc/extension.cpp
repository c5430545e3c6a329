// pybind11 bindings of fastalign's C++ helpers. NumPy arrays in and out; no torch dependency.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bin_packing.h"
#include "packing_layout.h"

namespace py = pybind11;

namespace {

py::array_t<int64_t> first_fit_decreasing_py(
    py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths, int64_t capacity) {
  if (lengths.ndim() != 1) throw std::invalid_argument("lengths must be a 1-d array");
  std::vector<int64_t> input(lengths.data(), lengths.data() + lengths.size());
  std::vector<int64_t> bins;
  {
    py::gil_scoped_release release;
    bins = fastalign::first_fit_decreasing(input, capacity);
  }
  py::array_t<int64_t> out(static_cast<py::ssize_t>(bins.size()));
  std::copy(bins.begin(), bins.end(), out.mutable_data());
  return out;
}

using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

fastalign::RaggedTokens ragged(const char* name, const Int64Array& tokens, const Int64Array& offsets) {
  if (tokens.ndim() != 1 || offsets.ndim() != 1) {
    throw std::invalid_argument(std::string(name) + "_tokens and " + name + "_offsets must be 1-d arrays");
  }
  return {std::vector<int64_t>(tokens.data(), tokens.data() + tokens.size()),
          std::vector<int64_t>(offsets.data(), offsets.data() + offsets.size())};
}

// Hands a vector's buffer to NumPy without copying: the capsule frees it with the array.
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& values) {
  auto* owner = new std::vector<T>(std::move(values));
  py::capsule free_owner(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(static_cast<py::ssize_t>(owner->size()), owner->data(), free_owner);
}

py::dict pack_layout_py(const Int64Array& prompt_tokens, const Int64Array& prompt_offsets,
                        const Int64Array& chosen_tokens, const Int64Array& chosen_offsets,
                        const Int64Array& rejected_tokens, const Int64Array& rejected_offsets,
                        int64_t token_budget, int64_t max_prompt_length, int64_t max_completion_length,
                        int64_t overflow, int64_t mode, int64_t vocab_size, bool sort_by_length) {
  const fastalign::RaggedTokens prompt = ragged("prompt", prompt_tokens, prompt_offsets);
  const fastalign::RaggedTokens chosen = ragged("chosen", chosen_tokens, chosen_offsets);
  const fastalign::RaggedTokens rejected = ragged("rejected", rejected_tokens, rejected_offsets);
  const fastalign::PackOptions options{token_budget, max_prompt_length, max_completion_length,
                                       overflow, mode, vocab_size, sort_by_length};
  fastalign::PackedLayout layout;
  {
    py::gil_scoped_release release;
    layout = fastalign::pack_layout(prompt, chosen, rejected, options);
  }
  // Same keys in the same order as pack_layout_python's dict.
  py::dict out;
  out["status"] = to_numpy(std::move(layout.status));
  out["kept"] = to_numpy(std::move(layout.kept));
  out["prompt_len"] = to_numpy(std::move(layout.prompt_len));
  out["chosen_len"] = to_numpy(std::move(layout.chosen_len));
  out["rejected_len"] = to_numpy(std::move(layout.rejected_len));
  out["input_ids"] = to_numpy(std::move(layout.input_ids));
  out["position_ids"] = to_numpy(std::move(layout.position_ids));
  out["example_ids"] = to_numpy(std::move(layout.example_ids));
  out["group_ids"] = to_numpy(std::move(layout.group_ids));
  out["segment_ids"] = to_numpy(std::move(layout.segment_ids));
  out["label_index"] = to_numpy(std::move(layout.label_index));
  out["targets"] = to_numpy(std::move(layout.targets));
  out["label_example"] = to_numpy(std::move(layout.label_example));
  out["label_segment"] = to_numpy(std::move(layout.label_segment));
  out["seq_lens_q"] = to_numpy(std::move(layout.seq_lens_q));
  out["seq_lens_k"] = to_numpy(std::move(layout.seq_lens_k));
  out["kv_index"] = to_numpy(std::move(layout.kv_index));
  out["row_example_offsets"] = to_numpy(std::move(layout.row_example_offsets));
  out["row_token_offsets"] = to_numpy(std::move(layout.row_token_offsets));
  out["row_label_offsets"] = to_numpy(std::move(layout.row_label_offsets));
  out["row_seq_offsets"] = to_numpy(std::move(layout.row_seq_offsets));
  out["row_kv_offsets"] = to_numpy(std::move(layout.row_kv_offsets));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastalign C++ helpers (packing); pure-Python twins live in fastalign.packing";
  // std::invalid_argument maps to Python's ValueError.
  m.def("first_fit_decreasing", &first_fit_decreasing_py, py::arg("lengths"), py::arg("capacity"),
        "Bin index per item, first-fit-decreasing (stable), bins numbered in opening order.");
  m.def("pack_layout", &pack_layout_py, py::arg("prompt_tokens"), py::arg("prompt_offsets"),
        py::arg("chosen_tokens"), py::arg("chosen_offsets"), py::arg("rejected_tokens"),
        py::arg("rejected_offsets"), py::arg("token_budget"), py::arg("max_prompt_length"),
        py::arg("max_completion_length"), py::arg("overflow"), py::arg("mode"), py::arg("vocab_size"),
        py::arg("sort_by_length") = true,
        "Truncate, assign rows (first-fit-decreasing) and lay out packed examples; a dict of flat "
        "NumPy arrays identical to fastalign.packing.layout_python.pack_layout_python.");
}
