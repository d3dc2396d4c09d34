#include "Sampler.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace {

int64_t NowUs() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

bool StatsEnabled() {
    static const bool enabled = std::getenv("PHI_AGENT_SAMPLER_STATS") != nullptr;
    return enabled;
}

// Whether `pending` (an incomplete character) + `piece` is a prefix of strict UTF-8 text (RFC 3629: no overlong
// forms, no surrogates, nothing past U+10FFFF) without NUL bytes; `tail` receives its trailing incomplete character.
bool StrictUtf8(const std::string& pending, const std::string& piece, std::string* tail) {
    const std::string s = pending + piece;
    size_t i = 0;
    const size_t n = s.size();
    while (i < n) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == 0) return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) len = 3, lo = 0xA0;
        else if (c >= 0xE1 && c <= 0xEC) len = 3;
        else if (c == 0xED) len = 3, hi = 0x9F;
        else if (c >= 0xEE && c <= 0xEF) len = 3;
        else if (c == 0xF0) len = 4, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) len = 4, hi = 0x8F;
        else return false;  // a continuation byte first, C0, C1, F5..FF
        for (size_t k = 1; k < len; k++) {
            if (i + k >= n) {  // the character continues in a later token
                if (tail) *tail = s.substr(i);
                return true;
            }
            const unsigned char b = static_cast<unsigned char>(s[i + k]);
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return false;
        }
        i += len;
    }
    if (tail) tail->clear();
    return true;
}

std::string Piece(const llama_vocab* vocab, llama_token token) {
    const LlamaApi& api = LlamaLib::Api();
    char buffer[256];
    int32_t n = api.llama_token_to_piece(vocab, token, buffer, sizeof buffer, 0, false);
    if (n >= 0) return std::string(buffer, (size_t)n);
    std::string piece((size_t)-n, '\0');
    n = api.llama_token_to_piece(vocab, token, piece.data(), (int32_t)piece.size(), 0, false);
    piece.resize(n > 0 ? (size_t)n : 0);
    return piece;
}

}  // namespace

void RequestSampler::SetGrammar(const LoadedModel& model, const std::string& grammar) {
    const LlamaApi& api = LlamaLib::Api();
    model_ = &model;
    LlamaLib::ClearLastLog();
    llama_sampler* g = api.llama_sampler_init_grammar(model.Vocab(), grammar.c_str(), "root");
    if (g == nullptr) {
        const std::string log = LlamaLib::TakeLastLog();
        throw std::invalid_argument("llama.cpp refused the grammar" + (log.empty() ? std::string() : ": " + log));
    }
    grammar_.reset(g);
}

void RequestSampler::Build(const LoadedModel& model, const SamplingParams& s, const std::vector<llama_token>& prompt) {
    const LlamaApi& api = LlamaLib::Api();
    model_ = &model;
    llama_sampler_chain_params cp = api.llama_sampler_chain_default_params();
    cp.no_perf = true;
    SamplerPtr chain(api.llama_sampler_chain_init(cp));
    const bool penalties = s.repeatPenalty != 1.0f || s.presencePenalty != 0.0f || s.frequencyPenalty != 0.0f;
    if (penalties) {
        api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_penalties(model.NVocab(), s.repeatLastN, s.repeatPenalty,
                                                                                  s.frequencyPenalty, s.presencePenalty));
    }
    if (s.temperature <= 0.0f) {
        api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_greedy());
    } else {
        if (s.topK > 0) api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_top_k(s.topK));
        if (s.topP < 1.0f) api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_top_p(s.topP, 1));
        if (s.minP > 0.0f) api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_min_p(s.minP, 1));
        api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_temp(s.temperature));
        api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_dist(s.seed));
    }
    if (penalties) {  // the penalties look back over the prompt too
        const size_t from = prompt.size() > (size_t)std::max(s.repeatLastN, 0) ? prompt.size() - s.repeatLastN : 0;
        for (size_t i = from; i < prompt.size(); i++) api.llama_sampler_accept(chain.get(), prompt[i]);
    }
    chain_ = std::move(chain);
}

void RequestSampler::Fill(const float* logits) {
    const int32_t n = model_->NVocab();
    cur_.resize((size_t)n);
    for (llama_token id = 0; id < n; id++) cur_[(size_t)id] = llama_token_data{id, logits[id], 0.0f};
}

bool RequestSampler::GrammarAllows(llama_token token) {
    llama_token_data one{token, 1.0f, 0.0f};
    llama_token_data_array single{&one, 1, -1, false};
    LlamaLib::Api().llama_sampler_apply(grammar_.get(), &single);
    return one.logit != -INFINITY;
}

bool RequestSampler::Fits(llama_token token, std::string* pending) {
    if (LlamaLib::Api().llama_vocab_is_eog(model_->Vocab(), token)) return GrammarAllows(token);
    const std::string piece = Piece(model_->Vocab(), token);
    if (piece.empty() || !StrictUtf8(pending_, piece, pending)) return false;
    return GrammarAllows(token);
}

bool RequestSampler::Complete() {
    if (!grammar_) return false;
    const llama_token eos = LlamaLib::Api().llama_vocab_eos(model_->Vocab());
    return eos >= 0 && GrammarAllows(eos);
}

llama_token RequestSampler::Sample(llama_context* ctx, int32_t idx) {
    const LlamaApi& api = LlamaLib::Api();
    const float* logits = api.llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) throw std::runtime_error("llama.cpp has no logits for this sequence");
    const int64_t t0 = grammar_ ? NowUs() : 0;
    Fill(logits);
    llama_token_data_array cur{cur_.data(), cur_.size(), -1, false};
    api.llama_sampler_apply(chain_.get(), &cur);
    if (cur.selected < 0 || cur.selected >= (int64_t)cur.size) throw std::runtime_error("the sampler selected no token");
    llama_token token = cur.data[cur.selected].id;
    if (!grammar_) {
        api.llama_sampler_accept(chain_.get(), token);
        return token;
    }
    tokens_++;
    const int64_t t1 = NowUs();
    chainUs_ += t1 - t0;
    std::string pending;
    const bool fits = Fits(token, &pending);
    const int64_t t2 = NowUs();
    checkUs_ += t2 - t1;
    if (!fits) {
        // The grammar rejects the chain's choice: mask the logits with it (the whole vocabulary), pick again.
        masked_count_++;
        Fill(logits);
        llama_token_data_array all{cur_.data(), cur_.size(), -1, false};
        api.llama_sampler_apply(grammar_.get(), &all);
        masked_.resize(cur_.size());
        for (size_t i = 0; i < cur_.size(); i++) masked_[(size_t)cur_[i].id] = cur_[i].logit;
        for (int attempt = 0;; attempt++) {
            bool any = false;
            for (float l : masked_)
                if (l != -INFINITY) {
                    any = true;
                    break;
                }
            if (!any || attempt >= 64) {
                throw std::runtime_error("the grammar allows no token here (the text so far cannot be continued by any token of this vocabulary)");
            }
            for (size_t i = 0; i < cur_.size(); i++) cur_[i] = llama_token_data{(llama_token)i, masked_[i], 0.0f};
            llama_token_data_array again{cur_.data(), cur_.size(), -1, false};
            api.llama_sampler_apply(chain_.get(), &again);
            if (again.selected < 0 || again.selected >= (int64_t)again.size) throw std::runtime_error("the sampler selected no token");
            token = again.data[again.selected].id;
            // the grammar allows it; it must also be text that stays strict UTF-8 (rare misses: mask them too)
            if (masked_[(size_t)token] != -INFINITY && Fits(token, &pending)) break;
            masked_[(size_t)token] = -INFINITY;
        }
        maskUs_ += NowUs() - t2;
    }
    if (!api.llama_vocab_is_eog(model_->Vocab(), token)) {
        try {
            api.llama_sampler_accept(grammar_.get(), token);
        } catch (const std::exception& e) {  // llama.cpp throws when a token empties its parse stacks; Fits() rules that out
            throw std::runtime_error(std::string("the grammar could not accept the token: ") + e.what());
        }
        pending_ = pending;
    }
    api.llama_sampler_accept(chain_.get(), token);
    return token;
}

void RequestSampler::Reset() noexcept {
    if (grammar_ && StatsEnabled() && tokens_ > 0) {
        fprintf(stderr, "[sampler] %llu tokens, %llu masked (%.1f%%); per token: chain %.3f ms, check %.3f ms, mask %.3f ms (per masked token %.3f ms)\n",
                (unsigned long long)tokens_, (unsigned long long)masked_count_, 100.0 * (double)masked_count_ / (double)tokens_,
                (double)chainUs_ / 1000.0 / (double)tokens_, (double)checkUs_ / 1000.0 / (double)tokens_,
                (double)maskUs_ / 1000.0 / (double)tokens_, masked_count_ ? (double)maskUs_ / 1000.0 / (double)masked_count_ : 0.0);
    }
    chain_.reset();
    grammar_.reset();
    tokens_ = 0;
}
