#include "Sampler.h"

#include <algorithm>
#include <array>
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

// Whether GBNF text refers to tokens: a '<' outside string literals, character classes and comments.
bool HasTokenRefs(const std::string& g) {
    for (size_t i = 0; i < g.size(); i++) {
        const char c = g[i];
        if (c == '#') {
            while (i < g.size() && g[i] != '\n' && g[i] != '\r') i++;
        } else if (c == '"' || c == '[') {
            const char close = c == '"' ? '"' : ']';
            for (i++; i < g.size() && g[i] != close; i++)
                if (g[i] == '\\') i++;
        } else if (c == '<') {
            return true;
        }
    }
    return false;
}

}  // namespace

// The vocabulary by the first byte of each token's text (what a grammar can rule out by one check of the byte).
struct TokenIndex {
    std::array<llama_token, 256> byteToken;               // the token whose text is that one byte, or -1
    std::array<std::vector<llama_token>, 256> byFirstByte;  // tokens whose text starts with that byte
    std::vector<llama_token> eog;                          // end-of-generation tokens
    std::vector<uint8_t> plain;  // per token: its text alone is complete strict UTF-8 (no NUL), so Extends() is cheap
};

namespace {
std::shared_ptr<const TokenIndex> BuildTokenIndex(const LoadedModel& model) {
    const LlamaApi& api = LlamaLib::Api();
    auto index = std::make_shared<TokenIndex>();
    index->byteToken.fill(-1);
    index->plain.assign((size_t)model.NVocab(), 0);
    for (llama_token id = 0; id < model.NVocab(); id++) {
        if (api.llama_vocab_is_eog(model.Vocab(), id)) {
            index->eog.push_back(id);
            continue;
        }
        const std::string piece = Piece(model.Vocab(), id);
        if (piece.empty()) continue;  // never generated with a grammar
        const unsigned char first = static_cast<unsigned char>(piece[0]);
        index->byFirstByte[first].push_back(id);
        if (piece.size() == 1 && index->byteToken[first] < 0) index->byteToken[first] = id;
        std::string tail;
        index->plain[(size_t)id] = StrictUtf8(std::string(), piece, &tail) && tail.empty();
    }
    return index;
}
}  // namespace

void RequestSampler::SetGrammar(LoadedModel& model, const std::string& grammar) {
    const LlamaApi& api = LlamaLib::Api();
    model_ = &model;
    std::call_once(model.tokenIndexOnce, [&model] { model.tokenIndex = BuildTokenIndex(model); });
    index_ = model.tokenIndex;
    LlamaLib::ClearLastLog();
    llama_sampler* g = api.llama_sampler_init_grammar(model.Vocab(), grammar.c_str(), "root");
    if (g == nullptr) {
        const std::string log = LlamaLib::TakeLastLog();
        throw std::invalid_argument("llama.cpp refused the grammar" + (log.empty() ? std::string() : ": " + log));
    }
    grammar_.reset(g);
    tokenRefs_ = HasTokenRefs(grammar);
}

void RequestSampler::Build(const LoadedModel& model, const SamplingParams& s, const std::vector<llama_token>& prompt) {
    const LlamaApi& api = LlamaLib::Api();
    model_ = &model;
    llama_sampler_chain_params cp = api.llama_sampler_chain_default_params();
    cp.no_perf = true;
    const bool penalties = s.repeatPenalty != 1.0f || s.presencePenalty != 0.0f || s.frequencyPenalty != 0.0f;
    if (penalties) {
        SamplerPtr chain(api.llama_sampler_chain_init(cp));
        api.llama_sampler_chain_add(chain.get(), api.llama_sampler_init_penalties(model.NVocab(), s.repeatLastN, s.repeatPenalty,
                                                                                  s.frequencyPenalty, s.presencePenalty));
        // the penalties look back over the prompt too
        const size_t from = prompt.size() > (size_t)std::max(s.repeatLastN, 0) ? prompt.size() - s.repeatLastN : 0;
        for (size_t i = from; i < prompt.size(); i++) api.llama_sampler_accept(chain.get(), prompt[i]);
        penalties_ = std::move(chain);
    }
    SamplerPtr pick(api.llama_sampler_chain_init(cp));
    if (s.temperature <= 0.0f) {
        api.llama_sampler_chain_add(pick.get(), api.llama_sampler_init_greedy());
        mode_ = Pick::Greedy;
    } else {
        if (s.topK > 0) api.llama_sampler_chain_add(pick.get(), api.llama_sampler_init_top_k(s.topK));
        if (s.topP < 1.0f) api.llama_sampler_chain_add(pick.get(), api.llama_sampler_init_top_p(s.topP, 1));
        if (s.minP > 0.0f) api.llama_sampler_chain_add(pick.get(), api.llama_sampler_init_min_p(s.minP, 1));
        api.llama_sampler_chain_add(pick.get(), api.llama_sampler_init_temp(s.temperature));
        api.llama_sampler_chain_add(pick.get(), api.llama_sampler_init_dist(s.seed));
        // what the first sampler of the pick keeps decides how much of the masked vocabulary it needs
        mode_ = s.topK > 0 ? Pick::TopK : (s.topP >= 1.0f && s.minP > 0.0f) ? Pick::MinP : Pick::All;
        topK_ = s.topK;
        minP_ = s.minP;
    }
    pick_ = std::move(pick);
    const char* mode = std::getenv("PHI_AGENT_GRAMMAR_MODE");
    maskAlways_ = mode != nullptr && (std::string(mode) == "first" || std::string(mode) == "full");
    maskWhole_ = mode != nullptr && std::string(mode) == "full";
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

bool RequestSampler::Extends(llama_token token, std::string* pending) {
    if (pending_.empty() && index_->plain[(size_t)token]) {
        pending->clear();
        return true;
    }
    if (LlamaLib::Api().llama_vocab_is_eog(model_->Vocab(), token)) return true;
    const std::string piece = Piece(model_->Vocab(), token);
    return !piece.empty() && StrictUtf8(pending_, piece, pending);
}

bool RequestSampler::Complete() {
    if (!grammar_) return false;
    const llama_token eos = LlamaLib::Api().llama_vocab_eos(model_->Vocab());
    return eos >= 0 && GrammarAllows(eos);
}

namespace {
[[noreturn]] void NothingAllowed() {
    throw std::runtime_error("the grammar allows no token here (no token of this vocabulary continues the text so far)");
}
llama_token Selected(const llama_token_data_array& a) {
    if (a.selected < 0 || a.selected >= (int64_t)a.size) throw std::runtime_error("the sampler selected no token");
    return a.data[a.selected].id;
}
}  // namespace

llama_token RequestSampler::Masked(std::string* pending) {
    const LlamaApi& api = LlamaLib::Api();
    const TokenIndex& index = *index_;
    // Which first bytes the grammar allows: one check of the one-byte tokens (and of the end-of-generation tokens).
    // A token whose text starts with a byte the grammar rejects is rejected too, so only the others are checked.
    std::vector<llama_token_data> probe;
    std::vector<int> probeByte;
    probe.reserve(256 + index.eog.size());
    for (int b = 0; b < 256; b++) {
        if (index.byteToken[b] < 0) continue;
        probe.push_back(llama_token_data{index.byteToken[b], 1.0f, 0.0f});
        probeByte.push_back(b);
    }
    for (llama_token id : index.eog) probe.push_back(llama_token_data{id, 1.0f, 0.0f});
    llama_token_data_array probes{probe.data(), probe.size(), -1, false};
    api.llama_sampler_apply(grammar_.get(), &probes);  // it only sets logits, in place: the order stays
    std::array<bool, 256> allowed;
    allowed.fill(true);  // a byte without a one-byte token cannot be ruled out this way
    for (size_t i = 0; i < probeByte.size(); i++) allowed[(size_t)probeByte[i]] = probe[i].logit != -INFINITY;
    order_.clear();
    if (maskWhole_ || tokenRefs_) allowed.fill(true);
    for (int b = 0; b < 256; b++) {
        if (!allowed[b]) continue;
        for (llama_token id : index.byFirstByte[b]) order_.push_back(llama_token_data{id, base_[(size_t)id], 0.0f});
    }
    for (size_t i = probeByte.size(); i < probe.size(); i++)
        if (probe[i].logit != -INFINITY) order_.push_back(llama_token_data{probe[i].id, base_[(size_t)probe[i].id], 0.0f});
    maskedTokens_ += order_.size() + probe.size();

    const size_t n = order_.size();
    const auto better = [](const llama_token_data& a, const llama_token_data& b) { return a.logit > b.logit; };
    valid_.clear();
    float best = -INFINITY;
    size_t done = 0;
    std::vector<float> before;
    for (size_t chunk = mode_ == Pick::All || maskWhole_ || tokenRefs_ ? n : 64; done < n; chunk *= 8) {
        const size_t end = std::min(n, done + std::max<size_t>(chunk, 1));
        // the next best logits: every candidate after `end` is at most as high as any before it
        if (end < n) std::nth_element(order_.begin() + (ptrdiff_t)done, order_.begin() + (ptrdiff_t)end, order_.end(), better);
        float lowest = INFINITY;
        before.resize(end - done);
        for (size_t i = done; i < end; i++) {
            lowest = std::min(lowest, order_[i].logit);
            before[i - done] = order_[i].logit;
        }
        llama_token_data_array part{order_.data() + done, end - done, -1, false};
        api.llama_sampler_apply(grammar_.get(), &part);
        for (size_t i = done; i < end; i++) {
            if (order_[i].logit == -INFINITY || before[i - done] == -INFINITY) continue;
            std::string tail;
            if (!Extends(order_[i].id, &tail)) continue;  // the grammar allows it, but its bytes do not make text
            valid_.push_back(llama_token_data{order_[i].id, before[i - done], 0.0f});
            best = std::max(best, before[i - done]);
        }
        done = end;
        if (done >= n || valid_.empty()) continue;
        // decided once nothing unchecked can change the pick: greedy needs the best allowed token, top-k the k best,
        // min-p every allowed token within log(p) of the best (the pick applies that bound itself)
        if (mode_ == Pick::Greedy && lowest < best) break;
        if (mode_ == Pick::TopK && valid_.size() >= (size_t)topK_) {
            size_t above = 0;  // allowed tokens strictly above every unchecked one
            for (const auto& v : valid_) above += v.logit > lowest;
            if (above >= (size_t)topK_) break;
        }
        if (mode_ == Pick::MinP && lowest < best + logf(minP_)) break;
    }
    // the pick sees the allowed tokens in token order, as it would see the whole vocabulary with the rest at -inf
    std::sort(valid_.begin(), valid_.end(), [](const llama_token_data& a, const llama_token_data& b) { return a.id < b.id; });
    for (;;) {
        if (valid_.empty()) NothingAllowed();
        pickFrom_.assign(valid_.begin(), valid_.end());  // the pick reorders and truncates what it is given
        llama_token_data_array some{pickFrom_.data(), pickFrom_.size(), -1, false};
        api.llama_sampler_apply(pick_.get(), &some);
        const llama_token token = Selected(some);
        // accepted into the grammar here; with token references llama.cpp's check can pass what its accept refuses
        // (see tokenRefs_): then the token is dropped and the pick made again
        if (api.llama_vocab_is_eog(model_->Vocab(), token) || AcceptGrammar(token)) {
            Extends(token, pending);
            return token;
        }
        valid_.erase(std::find_if(valid_.begin(), valid_.end(), [token](const llama_token_data& v) { return v.id == token; }));
    }
}

bool RequestSampler::AcceptGrammar(llama_token token) {
    const LlamaApi& api = LlamaLib::Api();
    if (!tokenRefs_) {
        try {
            api.llama_sampler_accept(grammar_.get(), token);
        } catch (const std::exception& e) {  // llama.cpp throws when a token empties its parse stacks; the check rules that out
            throw std::runtime_error(std::string("the grammar could not accept the token: ") + e.what());
        }
        return true;
    }
    SamplerPtr copy(api.llama_sampler_clone(grammar_.get()));
    if (!copy) throw std::runtime_error("could not copy the grammar");
    try {
        api.llama_sampler_accept(copy.get(), token);
    } catch (const std::exception&) {
        return false;  // the copy is thrown away; the grammar is as it was
    }
    grammar_ = std::move(copy);
    return true;
}

llama_token RequestSampler::Sample(llama_context* ctx, int32_t idx) {
    const LlamaApi& api = LlamaLib::Api();
    const float* logits = api.llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) throw std::runtime_error("llama.cpp has no logits for this sequence");
    const int64_t t0 = grammar_ ? NowUs() : 0;
    Fill(logits);
    llama_token_data_array cur{cur_.data(), cur_.size(), -1, false};
    if (penalties_) api.llama_sampler_apply(penalties_.get(), &cur);
    if (grammar_) {  // the penalized logits, for a second pick
        base_.resize(cur_.size());
        for (size_t i = 0; i < cur_.size(); i++) base_[i] = cur_[i].logit;
    }
    api.llama_sampler_apply(pick_.get(), &cur);
    llama_token token = Selected(cur);
    if (grammar_) {
        tokens_++;
        const int64_t t1 = NowUs();
        chainUs_ += t1 - t0;
        std::string pending;
        const bool fits = !maskAlways_ && Fits(token, &pending);
        const int64_t t2 = NowUs();
        checkUs_ += t2 - t1;
        const bool eog = api.llama_vocab_is_eog(model_->Vocab(), token);
        if (!fits || !(eog || AcceptGrammar(token))) {
            // The grammar rejects the chain's choice: pick again among the tokens it allows (Masked() accepts it
            // into the grammar).
            masked_count_++;
            token = Masked(&pending);
        }
        maskUs_ += NowUs() - t2;
        if (!api.llama_vocab_is_eog(model_->Vocab(), token)) pending_ = pending;
    }
    if (penalties_) api.llama_sampler_accept(penalties_.get(), token);
    api.llama_sampler_accept(pick_.get(), token);
    return token;
}

void RequestSampler::Reset() noexcept {
    if (grammar_ && StatsEnabled() && tokens_ > 0) {
        fprintf(stderr, "[sampler] %llu tokens, %llu masked (%.1f%%, %.0f vocabulary entries each); per token: chain %.3f ms, check %.3f ms, mask %.3f ms (per masked token %.3f ms)\n",
                (unsigned long long)tokens_, (unsigned long long)masked_count_, 100.0 * (double)masked_count_ / (double)tokens_,
                masked_count_ ? (double)maskedTokens_ / (double)masked_count_ : 0.0,
                (double)chainUs_ / 1000.0 / (double)tokens_, (double)checkUs_ / 1000.0 / (double)tokens_,
                (double)maskUs_ / 1000.0 / (double)tokens_, masked_count_ ? (double)maskUs_ / 1000.0 / (double)masked_count_ : 0.0);
    }
    penalties_.reset();
    pick_.reset();
    grammar_.reset();
    tokens_ = 0;
}
