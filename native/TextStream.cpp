#include "TextStream.h"

#include <algorithm>

namespace {

// Length of the longest prefix of `bytes` that ends on a UTF-8 character boundary: a trailing, still incomplete
// multi-byte sequence is held back until its continuation bytes arrive.
size_t CompleteUtf8Prefix(const std::string& bytes) {
    const size_t n = bytes.size();
    for (size_t back = 1; back <= 3 && back <= n; back++) {  // the lead byte of the last character is at most 3 back
        const unsigned char c = static_cast<unsigned char>(bytes[n - back]);
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
        size_t need = 1;
        if ((c & 0xE0) == 0xC0) need = 2;
        else if ((c & 0xF0) == 0xE0) need = 3;
        else if ((c & 0xF8) == 0xF0) need = 4;
        return back < need ? n - back : n;
    }
    return n;  // only continuation bytes (invalid) or nothing: let them through
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stops) {
    for (auto& s : stops)
        if (!s.empty()) stops_.push_back(std::move(s));
    for (const auto& s : stops_) maxStop_ = std::max(maxStop_, s.size());
}

void TextStream::Commit(const std::string& bytes) {
    if (bytes.empty() || stopped_) return;
    const size_t before = text_.size();
    text_ += bytes;
    if (stops_.empty()) return;
    // A new occurrence ends after `before`, so it starts at most maxStop_ - 1 bytes before it.
    const size_t from = before >= maxStop_ - 1 ? before - (maxStop_ - 1) : 0;
    size_t best = std::string::npos;
    for (const auto& s : stops_) {
        for (size_t at = text_.find(s, from); at != std::string::npos && at < best; at = text_.find(s, at + 1)) {
            if (!marksOnly_ || std::binary_search(marks_.begin(), marks_.end(), at)) {
                best = at;
                break;
            }
        }
    }
    if (best != std::string::npos) {
        text_.resize(best);
        stopped_ = true;
    }
}

void TextStream::MarkStop() {
    if (!pending_.empty() || stopped_ || finished_) return;
    if (marks_.empty() || marks_.back() < text_.size()) marks_.push_back(text_.size());
}

// The longest tail of text_ that is a proper prefix of a stop string.
size_t TextStream::HoldBack() const {
    size_t hold = 0;
    for (const auto& s : stops_)
        for (size_t k = std::min(s.size() - 1, text_.size()); k > hold; k--)
            if (text_.compare(text_.size() - k, k, s, 0, k) == 0) {
                hold = k;
                break;
            }
    return hold;
}

std::string TextStream::Release(size_t end) {
    if (end <= streamed_) return std::string();
    std::string out = text_.substr(streamed_, end - streamed_);
    streamed_ = end;
    return out;
}

std::string TextStream::Push(const std::string& piece) {
    if (finished_) return std::string();
    pending_ += piece;
    const size_t complete = CompleteUtf8Prefix(pending_);
    const std::string bytes = pending_.substr(0, complete);
    pending_.erase(0, complete);
    Commit(bytes);
    if (stopped_) return Finish();
    // Recomputed after every token, also one that only adds to an incomplete character.
    return Release(text_.size() - HoldBack());
}

std::string TextStream::Next(const std::string& piece, bool end) {
    std::string out = Push(piece);
    if (end && !finished_) out += Finish();
    return out;
}

std::string TextStream::Finish() {
    if (finished_) return std::string();
    if (!stopped_) {
        // Bytes of a character that never completed are text too (they render as U+FFFD). Committed through the
        // same search, so not even they can complete a stop string unseen.
        std::string rest;
        rest.swap(pending_);
        Commit(rest);
    }
    pending_.clear();
    finished_ = true;
    return Release(text_.size());
}
