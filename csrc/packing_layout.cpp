#include "packing_layout.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include "bin_packing.h"

namespace fastalign {
namespace {

using std::to_string;

// Fewest tokens one example can occupy: one per part, the prompt twice when unshared.
int64_t min_budget(int64_t mode) { return mode == kUnsharedPrompt ? 4 : mode == kCompletion ? 2 : 3; }

int64_t length(const RaggedTokens& part, size_t i) { return part.offsets[i + 1] - part.offsets[i]; }

// Tokens an example takes in a row.
int64_t example_size(int64_t p, int64_t c, int64_t r, int64_t mode) {
  return (mode == kUnsharedPrompt ? 2 * p : p) + c + r;
}

// Calling-convention checks that pack.py always satisfies (the Python twin assumes them), so
// the data checks below can index freely.
void check_structure(const RaggedTokens& prompt, const RaggedTokens& chosen,
                     const RaggedTokens& rejected, const PackOptions& options) {
  if (options.mode < kSharedPrompt || options.mode > kCompletion) {
    throw std::invalid_argument("mode must be 0 (shared), 1 (unshared) or 2 (completion), got " +
                                to_string(options.mode));
  }
  if (options.overflow < kOverflowError || options.overflow > kOverflowTruncate) {
    throw std::invalid_argument("overflow must be 0 (error), 1 (drop) or 2 (truncate), got " +
                                to_string(options.overflow));
  }
  const std::pair<const char*, const RaggedTokens*> parts[] = {
      {"prompt", &prompt}, {"chosen", &chosen}, {"rejected", &rejected}};
  for (const auto& [name, part] : parts) {
    const auto& offsets = part->offsets;
    if (offsets.size() != prompt.offsets.size() || offsets.empty() || offsets.front() != 0 ||
        offsets.back() != static_cast<int64_t>(part->tokens.size())) {
      throw std::invalid_argument(std::string(name) + "_offsets must have " +
                                  to_string(prompt.offsets.size()) + " entries from 0 to the " +
                                  "number of " + name + " tokens");
    }
  }
  if (options.mode == kCompletion &&
      std::any_of(rejected.offsets.begin(), rejected.offsets.end(), [](int64_t o) { return o != 0; })) {
    throw std::invalid_argument("rejected_offsets must be all zeros in completion mode");
  }
}

// Every example non-empty (checked for all examples first), then every id in range.
void check_tokens(const std::string& name, const RaggedTokens& part, int64_t vocab_size) {
  const size_t n = part.offsets.size() - 1;
  for (size_t i = 0; i < n; ++i) {
    if (length(part, i) < 1) {
      throw std::invalid_argument(name + "[" + to_string(i) + "] is empty; every example needs at least one token");
    }
  }
  // Offsets now rise strictly from 0 to tokens.size(), so each token has exactly one example.
  for (size_t i = 0; i < n; ++i) {
    for (int64_t j = part.offsets[i]; j < part.offsets[i + 1]; ++j) {
      const int64_t id = part.tokens[j];
      if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
        const std::string bound = vocab_size > 0 ? "[0, vocab_size=" + to_string(vocab_size) + ")" : ">= 0";
        throw std::invalid_argument(name + "[" + to_string(i) + "] holds token id " + to_string(id) +
                                    ", outside " + bound);
      }
    }
  }
}

// Kept lengths of every example (before any row assignment).
struct Lengths {
  std::vector<int64_t> p, c, r;
};

// Shortens an example to the budget: the prompt from its start first, then both answers are
// capped at an equal share. Every part keeps >= 1 token because the budget is >= min_budget.
void fit_to_budget(int64_t& p, int64_t& c, int64_t& r, int64_t mode, int64_t budget) {
  const int64_t copies = mode == kUnsharedPrompt ? 2 : 1;
  if (c + r + copies > budget) {
    const int64_t cap = mode == kCompletion ? budget - 1 : (budget - copies) / 2;
    c = std::min(c, cap);
    r = std::min(r, cap);
  }
  p = std::min(p, (budget - c - r) / copies);  // budget - c - r >= copies > 0: floor == truncation
}

// Applies max_*_length, then on_overflow to examples still over the budget; fills `status`.
Lengths resolve_lengths(const RaggedTokens& prompt, const RaggedTokens& chosen,
                        const RaggedTokens& rejected, const PackOptions& options,
                        std::vector<int8_t>& status) {
  const size_t n = prompt.offsets.size() - 1;
  Lengths kept{std::vector<int64_t>(n), std::vector<int64_t>(n), std::vector<int64_t>(n)};
  status.assign(n, kKept);
  for (size_t i = 0; i < n; ++i) {
    int64_t p = length(prompt, i), c = length(chosen, i), r = length(rejected, i);
    if (options.max_prompt_length > 0) p = std::min(p, options.max_prompt_length);
    if (options.max_completion_length > 0) {
      c = std::min(c, options.max_completion_length);
      r = std::min(r, options.max_completion_length);
    }
    if (p < length(prompt, i) || c < length(chosen, i) || r < length(rejected, i)) status[i] = kTruncated;
    const int64_t size = example_size(p, c, r, options.mode);
    if (size > options.token_budget) {
      if (options.overflow == kOverflowError) {
        throw std::invalid_argument(
            "example " + to_string(i) + " needs " + to_string(size) + " tokens (prompt " + to_string(p) +
            ", chosen " + to_string(c) + ", rejected " + to_string(r) + ") but token_budget is " +
            to_string(options.token_budget) +
            "; raise token_budget, set max_prompt_length / max_completion_length, or pass "
            "on_overflow='drop' or 'truncate'");
      }
      if (options.overflow == kOverflowDrop) {
        status[i] = kDropped;
      } else {
        fit_to_budget(p, c, r, options.mode, options.token_budget);
        status[i] = kTruncated;
      }
    }
    kept.p[i] = p;
    kept.c[i] = c;
    kept.r[i] = r;
  }
  return kept;
}

// Appends examples to the layout, one row at a time; positions inside a row are row-relative.
class RowWriter {
 public:
  RowWriter(PackedLayout& out, int64_t mode) : out_(out), mode_(mode) {}

  void add_example(int64_t local, const int64_t* prompt, int64_t p, const int64_t* chosen, int64_t c,
                   const int64_t* rejected, int64_t r) {
    if (mode_ == kSharedPrompt) {
      // [P C R]: R is laid out after C but positioned (and attending) as if right after P.
      add_tokens(prompt, p, 0, local, local, kPrompt);
      add_tokens(chosen, c, p, local, local, kChosen);
      add_tokens(rejected, r, p, local, local, kRejected);
      // The last prompt row predicts the first token of both answers.
      add_labels(start_ + p - 1, start_ + p, chosen, c, local, kChosen);
      add_labels(start_ + p - 1, start_ + p + c, rejected, r, local, kRejected);
      add_sequence(p + c, {start_, start_ + p + c}, {0, 0});
      add_sequence(r, {start_, start_ + p}, {start_ + p + c, start_ + p + c + r});
      start_ += p + c + r;
      return;
    }
    // [P C] then (unless completion) [P R]: independent causal sequences, one group each.
    const int64_t group = mode_ == kUnsharedPrompt ? 2 * local : local;
    add_sequence_copy(local, group, prompt, p, chosen, c, kChosen);
    if (mode_ == kUnsharedPrompt) add_sequence_copy(local, group + 1, prompt, p, rejected, r, kRejected);
  }

  // Closes the current row: records where it ends in every group of arrays.
  void end_row() {
    out_.row_example_offsets.push_back(static_cast<int64_t>(out_.prompt_len.size()));
    out_.row_token_offsets.push_back(static_cast<int64_t>(out_.input_ids.size()));
    out_.row_label_offsets.push_back(static_cast<int64_t>(out_.label_index.size()));
    out_.row_seq_offsets.push_back(static_cast<int64_t>(out_.seq_lens_q.size()));
    out_.row_kv_offsets.push_back(static_cast<int64_t>(out_.kv_index.size()));
    start_ = 0;
  }

 private:
  struct Range {
    int64_t lo, hi;
  };

  // One unshared sequence [P answer] starting at start_.
  void add_sequence_copy(int64_t local, int64_t group, const int64_t* prompt, int64_t p,
                         const int64_t* answer, int64_t a, Segment segment) {
    add_tokens(prompt, p, 0, local, group, kPrompt);
    add_tokens(answer, a, p, local, group, segment);
    add_labels(start_ + p - 1, start_ + p, answer, a, local, segment);
    add_sequence(p + a, {start_, start_ + p + a}, {0, 0});
    start_ += p + a;
  }

  // A run of tokens with consecutive positions from first_position and one segment.
  void add_tokens(const int64_t* ids, int64_t n, int64_t first_position, int64_t example,
                  int64_t group, Segment segment) {
    out_.input_ids.insert(out_.input_ids.end(), ids, ids + n);
    for (int64_t k = 0; k < n; ++k) out_.position_ids.push_back(first_position + k);
    out_.example_ids.insert(out_.example_ids.end(), n, example);
    out_.group_ids.insert(out_.group_ids.end(), n, group);
    out_.segment_ids.insert(out_.segment_ids.end(), n, segment);
  }

  // Answer token k is predicted by row `first_row` (k = 0, the last prompt row) or by the
  // row of answer token k - 1, i.e. rest_start + k - 1.
  void add_labels(int64_t first_row, int64_t rest_start, const int64_t* answer, int64_t n,
                  int64_t example, Segment segment) {
    for (int64_t k = 0; k < n; ++k) out_.label_index.push_back(k == 0 ? first_row : rest_start + k - 1);
    out_.targets.insert(out_.targets.end(), answer, answer + n);
    out_.label_example.insert(out_.label_example.end(), n, example);
    out_.label_segment.insert(out_.label_segment.end(), n, segment);
  }

  // A varlen sequence of `queries` query rows whose keys are the rows of two ranges.
  void add_sequence(int64_t queries, Range first, Range second) {
    out_.seq_lens_q.push_back(queries);
    out_.seq_lens_k.push_back((first.hi - first.lo) + (second.hi - second.lo));
    for (const Range& keys : {first, second}) {
      for (int64_t row = keys.lo; row < keys.hi; ++row) out_.kv_index.push_back(row);
    }
  }

  PackedLayout& out_;
  const int64_t mode_;
  int64_t start_ = 0;  // row-relative index of the next token
};

}  // namespace

PackedLayout pack_layout(const RaggedTokens& prompt, const RaggedTokens& chosen,
                         const RaggedTokens& rejected, const PackOptions& options) {
  check_structure(prompt, chosen, rejected, options);
  // Same check order as the twin, so the same (first) error is reported.
  if (options.token_budget < min_budget(options.mode)) {
    throw std::invalid_argument("token_budget must be >= " + to_string(min_budget(options.mode)) +
                                " in this mode, got " + to_string(options.token_budget));
  }
  check_tokens("prompt_ids", prompt, options.vocab_size);
  check_tokens("chosen_ids", chosen, options.vocab_size);
  if (options.mode != kCompletion) check_tokens("rejected_ids", rejected, options.vocab_size);

  PackedLayout out;
  const Lengths lengths = resolve_lengths(prompt, chosen, rejected, options, out.status);

  // Rows for the examples not dropped (every size is now in [1, token_budget]).
  std::vector<int64_t> inputs, sizes;
  for (size_t i = 0; i < out.status.size(); ++i) {
    if (out.status[i] == kDropped) continue;
    inputs.push_back(static_cast<int64_t>(i));
    sizes.push_back(example_size(lengths.p[i], lengths.c[i], lengths.r[i], options.mode));
  }
  const std::vector<int64_t> rows = first_fit_decreasing(sizes, options.token_budget, options.sort_by_length);
  // Examples in row order, and by input index inside a row (a stable sort keeps input order).
  std::vector<size_t> order(inputs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a] < rows[b]; });

  RowWriter writer(out, options.mode);
  for (auto* offsets : {&out.row_example_offsets, &out.row_token_offsets, &out.row_label_offsets,
                        &out.row_seq_offsets, &out.row_kv_offsets}) {
    offsets->push_back(0);
  }
  int64_t local = 0;  // example index inside the current row
  for (size_t position = 0; position < order.size(); ++position) {
    const size_t i = static_cast<size_t>(inputs[order[position]]);
    const int64_t p = lengths.p[i], c = lengths.c[i], r = lengths.r[i];
    // The last p prompt tokens, the first c / r answer tokens.
    writer.add_example(local++, prompt.tokens.data() + prompt.offsets[i + 1] - p, p,
                       chosen.tokens.data() + chosen.offsets[i], c,
                       rejected.tokens.data() + rejected.offsets[i], r);
    out.kept.push_back(static_cast<int64_t>(i));
    out.prompt_len.push_back(p);
    out.chosen_len.push_back(c);
    out.rejected_len.push_back(r);
    const bool row_ends = position + 1 == order.size() || rows[order[position + 1]] != rows[order[position]];
    if (row_ends) {
      writer.end_row();
      local = 0;
    }
  }
  return out;
}

}  // namespace fastalign
