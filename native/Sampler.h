// RequestSampler: how one request picks its tokens. It owns the llama.cpp sampler chain of the request's options
// (penalties, then greedy or top-k / top-p / min-p / temperature / dist) and, when the request has a grammar,
// llama.cpp's grammar sampler (llama_sampler_init_grammar: GBNF, start rule "root"), kept out of the chain.
//
// With a grammar it samples as llama.cpp's common_sampler does (common/sampling.cpp): the chain picks a token from
// the raw logits, and only that token is checked against the grammar; when the grammar rejects it, the logits are
// masked by the grammar and the chain picks again. The check costs one token; a mask of the whole vocabulary costs
// ~10 ms (51200 tokens), so it runs only when the model's own choice does not fit, and then, when the pick needs
// only the best tokens (greedy, top-k, min-p), on the highest logits first, in growing chunks, until the pick is
// decided (the answer is the same as with the whole vocabulary masked). The result is the chain's choice among the
// tokens the grammar allows (for dist sampling: the distribution restricted to them).
//
// On top of the grammar, a token must extend the text as strict UTF-8 (no overlong forms, surrogates or NUL bytes:
// the grammar decodes bytes leniently, and such a text would not read back as the characters it matched) and must
// have text (a control token renders as nothing). An end-of-generation token is never fed to the grammar (llama.cpp
// aborts on one it does not allow); the engine ends the request on it. Nothing here throws through a C frame: the
// engine thread catches what Sample() throws and fails that request alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "Common.h"

// Every field comes from JS on each submit (src/model/options.ts holds the defaults; Submit requires them all).
struct SamplingParams {
    float temperature;
    int32_t topK;
    float topP;
    float minP;
    float repeatPenalty;
    float presencePenalty;
    float frequencyPenalty;
    int32_t repeatLastN;
    uint32_t seed;
};

class RequestSampler {
public:
    // Parses `grammar` for `model`'s vocabulary (JS thread, at submit). Throws std::invalid_argument, with
    // llama.cpp's reason, when llama.cpp refuses it (src/grammar/gbnf.ts checks it first, so this is a backstop).
    void SetGrammar(LoadedModel& model, const std::string& grammar);
    // Builds the chain (the penalties look back over the end of `prompt`).
    void Build(const LoadedModel& model, const SamplingParams& s, const std::vector<llama_token>& prompt);
    // Picks the next token from the logits of batch row `idx` and accepts it. Throws std::runtime_error when the
    // grammar allows no token (the request fails; the others go on).
    llama_token Sample(llama_context* ctx, int32_t idx);
    bool HasGrammar() const { return grammar_ != nullptr; }
    // Whether the text so far is a complete document of the grammar (it would let generation end here). False
    // without a grammar.
    bool Complete();
    // Frees the samplers (prints the grammar's statistics first when PHI_AGENT_SAMPLER_STATS is set).
    void Reset() noexcept;

private:
    // What the pick needs to see of the masked logits: all of them, or only the best (see Masked).
    enum class Pick { Greedy, TopK, MinP, All };

    bool GrammarAllows(llama_token token);
    // Whether `token` may follow the text so far, apart from the grammar: it has text and keeps it strict UTF-8.
    bool Extends(llama_token token, std::string* pending);
    // Extends() and the grammar allows it.
    bool Fits(llama_token token, std::string* pending) { return Extends(token, pending) && GrammarAllows(token); }
    // Copies `logits` into cur_ (one entry per token, by id).
    void Fill(const float* logits);
    // Accepts `token` into the grammar; false (the grammar unchanged) when llama.cpp's accept refuses it.
    bool AcceptGrammar(llama_token token);
    // The pick among the tokens the grammar allows, accepted into the grammar. It checks only tokens whose first byte the grammar allows (one
    // check of the 256 one-byte tokens rules out the rest), and for Greedy, TopK and MinP only the best of those,
    // in growing chunks, until nothing unchecked could change the pick.
    llama_token Masked(std::string* pending);

    const LoadedModel* model_ = nullptr;  // the engine's model: it outlives every request's sampling
    SamplerPtr penalties_;  // null without penalties
    SamplerPtr pick_;       // greedy, or top-k / top-p / min-p / temperature / dist
    SamplerPtr grammar_;
    Pick mode_ = Pick::All;
    // Benchmarks only (PHI_AGENT_GRAMMAR_MODE, read when the chain is built): "first" masks before every pick
    // (no check of the chain's choice), "full" also masks the whole vocabulary (no first-byte filter, no chunks):
    // llama.cpp's plain grammar-first sampling, to compare against.
    bool maskAlways_ = false;
    bool maskWhole_ = false;
    // The grammar refers to tokens (<[id]>, <text>, !<...>): a token can then fit where its first byte alone does
    // not, so Masked() checks every token (no first-byte filter); and llama.cpp's check can pass a token that its
    // accept then rejects (characters, then a token reference, inside one token: the check matches the whole token
    // against the reference, the accept does not), so a token is accepted on a copy of the grammar first.
    bool tokenRefs_ = false;
    std::vector<llama_token_data> pickFrom_;
    int32_t topK_ = 0;
    float minP_ = 0;
    std::vector<llama_token_data> cur_;
    std::vector<float> base_;     // the logits after the penalties, by token id
    std::vector<llama_token_data> order_;  // candidates of Masked(), best first chunk by chunk
    std::vector<llama_token_data> valid_;
    std::shared_ptr<const TokenIndex> index_;
    std::string pending_;  // bytes of an incomplete UTF-8 character at the end of the text so far
    // statistics (PHI_AGENT_SAMPLER_STATS)
    uint64_t tokens_ = 0, masked_count_ = 0, maskedTokens_ = 0;  // maskedTokens_: vocabulary entries the grammar checked
    int64_t chainUs_ = 0, checkUs_ = 0, maskUs_ = 0;
};
