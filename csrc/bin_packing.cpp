#include "bin_packing.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

namespace fastalign {
namespace {

// Max segment tree over the remaining room of every possible bin (at most one per item):
// "first bin with room >= L" is a leftmost descent in O(log n).
class RoomTree {
 public:
  RoomTree(size_t bins, int64_t capacity) : size_(1) {
    while (size_ < bins) size_ <<= 1;
    room_.assign(2 * size_, 0);
    for (size_t i = 0; i < bins; ++i) room_[size_ + i] = capacity;
    for (size_t i = size_ - 1; i > 0; --i) room_[i] = std::max(room_[2 * i], room_[2 * i + 1]);
  }

  // Leftmost leaf with room >= need; the caller guarantees one exists.
  size_t first_fit(int64_t need) const {
    size_t node = 1;
    while (node < size_) node = room_[2 * node] >= need ? 2 * node : 2 * node + 1;
    return node - size_;
  }

  void take(size_t bin, int64_t amount) {
    size_t node = size_ + bin;
    room_[node] -= amount;
    for (node >>= 1; node > 0; node >>= 1) room_[node] = std::max(room_[2 * node], room_[2 * node + 1]);
  }

 private:
  size_t size_;
  std::vector<int64_t> room_;
};

}  // namespace

std::vector<int64_t> first_fit_decreasing(const std::vector<int64_t>& lengths, int64_t capacity,
                                          bool decreasing) {
  if (capacity < 1) throw std::invalid_argument("capacity must be >= 1, got " + std::to_string(capacity));
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 1 || lengths[i] > capacity) {
      throw std::invalid_argument("lengths[" + std::to_string(i) + "] = " + std::to_string(lengths[i]) +
                                  " is outside [1, capacity=" + std::to_string(capacity) + "]");
    }
  }
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  if (decreasing) {
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  }

  std::vector<int64_t> bin_of(lengths.size(), -1);
  if (lengths.empty()) return bin_of;
  RoomTree tree(lengths.size(), capacity);
  for (size_t item : order) {
    size_t bin = tree.first_fit(lengths[item]);
    tree.take(bin, lengths[item]);
    bin_of[item] = static_cast<int64_t>(bin);
  }
  return bin_of;
}

}  // namespace fastalign
