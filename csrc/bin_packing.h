// First-fit-decreasing bin packing of sequence lengths into fixed-capacity rows.
#pragma once

#include <cstdint>
#include <vector>

namespace fastalign {

// Returns, for each item, the index of the bin it goes to. Items are placed longest first
// (ties in input order) — or in input order when `decreasing` is false — each into the
// lowest-numbered bin with room, bins numbered in the order they are opened. Throws
// std::invalid_argument for a length outside [1, capacity].
std::vector<int64_t> first_fit_decreasing(const std::vector<int64_t>& lengths, int64_t capacity,
                                          bool decreasing = true);

}  // namespace fastalign
