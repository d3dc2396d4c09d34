// TextStream: what a generation's text is, and what of it may be streamed yet. Pure C++ (no N-API, no llama.cpp):
// the engine feeds it every generated token's bytes (NativeEngine::ProcessToken) and ends it (NativeEngine::Finish);
// `textStreamRun` in addon.cpp drives the very same class from JS for the unit and property tests
// (test/TextStream.test.ts).
//
// Two things are held back from the stream until they are decided:
//   - the bytes of a UTF-8 character whose continuation bytes have not arrived yet (a token may be half a character);
//   - the longest tail of the text that is a proper prefix of a stop string (it may still become that stop string).
// A stop string is searched in the committed text after every token; the text is cut before its first occurrence.
// At the end (EOS, maxTokens, end of context, abort) everything held back is released: the chunks returned by
// Push() and Finish() always concatenate to exactly Text(), and no stop string appears in either.
// With a grammar (StopOnlyAtMarks), a stop string ends the text only where it starts at a marked offset: where the
// grammar's document was complete (MarkStop after such a token); an occurrence elsewhere is part of the document.
#pragma once

#include <string>
#include <vector>

class TextStream {
public:
    explicit TextStream(std::vector<std::string> stops = {});

    // Adds one token's bytes. Returns the bytes that may be streamed now (possibly empty). After a stop string is
    // found, Stopped() is true, Text() is cut before it and the stream is finished (later calls return "").
    std::string Push(const std::string& piece);
    // Push(), and when `end` (or a stop string) ends the generation with this token, Finish() too.
    std::string Next(const std::string& piece, bool end);
    // Ends the stream: commits a trailing incomplete character as it is, and returns everything not streamed yet.
    // Idempotent: a second call returns "".
    std::string Finish();

    // Only stop strings that start at an offset passed to MarkStop() end the text (call before the first Push()).
    void StopOnlyAtMarks() { marksOnly_ = true; }
    // Marks the current end of the text as a place where a stop string may end it (ignored while a character is
    // incomplete).
    void MarkStop();

    const std::string& Text() const { return text_; }
    bool Stopped() const { return stopped_; }
    bool Finished() const { return finished_; }

private:
    // Appends complete bytes to text_, cuts at a stop string if one now occurs.
    void Commit(const std::string& bytes);
    size_t HoldBack() const;
    std::string Release(size_t end);

    std::vector<std::string> stops_;
    size_t maxStop_ = 0;
    std::string text_;     // committed text: complete UTF-8 characters, cut before a stop string
    std::string pending_;  // bytes of an incomplete UTF-8 character
    size_t streamed_ = 0;  // bytes of text_ already returned
    bool stopped_ = false;
    bool finished_ = false;
    bool marksOnly_ = false;
    std::vector<size_t> marks_;  // increasing offsets of text_ where a stop string may start (marksOnly_)
};
