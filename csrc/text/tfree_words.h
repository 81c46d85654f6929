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

// As tfree_split, without copies: each word views `text` or static storage, so the views live as
// long as `text` does. On error `words` is left as it was.
void tfree_split_views(std::string_view text, std::vector<std::string_view>& words);

// The text whose split is `words` (inverse whitespace rules, run-length tokens expanded).
// An empty word, or a run-length token of more than kMaxRunLength, throws lmk::Error(Value).
std::string tfree_join(const std::vector<std::string_view>& words);

// Largest count accepted in a run-length token ("<|N<-ws->|>") by tfree_join; the splitter
// writes only 2 and 4, and a larger count would make one word expand to gigabytes.
constexpr size_t kMaxRunLength = size_t{1} << 30;

}  // namespace lmk::text
