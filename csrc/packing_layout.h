// Truncation, row assignment and flat layout of packed examples. Twin of
// fastalign/packing/layout_python.py (pack_layout_python): tests assert identical arrays and
// identical error messages, so a change here must be mirrored there.
#pragma once

#include <cstdint>
#include <vector>

namespace fastalign {

// Codes shared with layout_python.py (MODES, OVERFLOW, KEPT/TRUNCATED/DROPPED, PROMPT/CHOSEN/REJECTED).
enum PackMode : int64_t { kSharedPrompt = 0, kUnsharedPrompt = 1, kCompletion = 2 };
enum OverflowPolicy : int64_t { kOverflowError = 0, kOverflowDrop = 1, kOverflowTruncate = 2 };
enum ExampleStatus : int8_t { kKept = 0, kTruncated = 1, kDropped = 2 };
enum Segment : int8_t { kPrompt = 0, kChosen = 1, kRejected = 2 };

// The token lists of all examples, flattened: example i is tokens[offsets[i] : offsets[i + 1]].
struct RaggedTokens {
  std::vector<int64_t> tokens;
  std::vector<int64_t> offsets;
};

struct PackOptions {
  int64_t token_budget = 0;           // tokens per row
  int64_t max_prompt_length = -1;     // <= 0: no limit; otherwise keep the last this-many
  int64_t max_completion_length = -1; // <= 0: no limit; otherwise keep the first this-many
  int64_t overflow = kOverflowError;  // OverflowPolicy
  int64_t mode = kSharedPrompt;       // PackMode
  int64_t vocab_size = -1;            // <= 0: unknown (ids are only checked to be >= 0)
  bool sort_by_length = true;         // first-fit-decreasing; false: first-fit in input order
};

// Flat arrays; each row_*_offsets array (num_rows + 1 entries) splits its group by row.
// Row-relative values (label_index, kv_index) index tokens inside their own row.
struct PackedLayout {
  std::vector<int8_t> status;  // per input example: ExampleStatus
  // Per kept example, rows in order and input order inside a row; lengths after truncation.
  std::vector<int64_t> kept, prompt_len, chosen_len, rejected_len, row_example_offsets;
  // Per token.
  std::vector<int64_t> input_ids, position_ids, example_ids, group_ids;
  std::vector<int8_t> segment_ids;
  std::vector<int64_t> row_token_offsets;
  // Per scored answer token: the row predicting it, the token, its example and segment.
  std::vector<int64_t> label_index, targets, label_example;
  std::vector<int8_t> label_segment;
  std::vector<int64_t> row_label_offsets;
  // Per varlen attention sequence: query and key lengths, and the rows gathered as keys.
  std::vector<int64_t> seq_lens_q, seq_lens_k, row_seq_offsets;
  std::vector<int64_t> kv_index, row_kv_offsets;
};

// Truncates examples (max lengths, then on_overflow), assigns them to rows of token_budget
// tokens by first-fit-decreasing and lays each row out. In completion mode `rejected` has no
// tokens and all-zero offsets. Throws std::invalid_argument for bad input, with the messages
// of the Python twin.
PackedLayout pack_layout(const RaggedTokens& prompt, const RaggedTokens& chosen,
                         const RaggedTokens& rejected, const PackOptions& options);

}  // namespace fastalign
