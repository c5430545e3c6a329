// pybind11 bindings of fastalign's C++ helpers. NumPy arrays in and out; no torch dependency.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "bin_packing.h"

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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastalign C++ helpers (packing); pure-Python twins live in fastalign.packing";
  // std::invalid_argument maps to Python's ValueError.
  m.def("first_fit_decreasing", &first_fit_decreasing_py, py::arg("lengths"), py::arg("capacity"),
        "Bin index per item, first-fit-decreasing (stable), bins numbered in opening order.");
}
