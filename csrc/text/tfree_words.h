// T-FREE word splitter and its exact inverse (the official `text_to_words` / `words_to_text`).
//
// Words are UTF-8 strings. split() follows Python 3.11 semantics (Unicode 14.0) for the regex
// classes it needs (\d, \w); invalid UTF-8 throws lmk::Error(Value). join(split(t)) == t.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace lmk::text {

// Appends the words of `text` to `words`.
void tfree_split(std::string_view text, std::vector<std::string>& words);

// The text whose split is `words` (inverse whitespace rules, run-length tokens expanded).
std::string tfree_join(const std::vector<std::string_view>& words);

}  // namespace lmk::text
