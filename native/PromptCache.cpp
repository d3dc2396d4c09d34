#include "PromptCache.h"

#include <algorithm>
#include <numeric>

// ---- CellLedger ----

CellLedger::CellLedger(uint32_t sequences) : chain_(sequences) {}

int32_t CellLedger::MaxEnd(const Block& b) {
    int32_t m = b.p0;
    for (const Ref& r : b.refs) m = std::max(m, r.end);
    return m;
}

CellLedger::Ref* CellLedger::RefOf(Block& b, int32_t seq) {
    for (Ref& r : b.refs)
        if (r.seq == seq) return &r;
    return nullptr;
}

const CellLedger::Ref* CellLedger::RefOf(const Block& b, int32_t seq) const {
    for (const Ref& r : b.refs)
        if (r.seq == seq) return &r;
    return nullptr;
}

int32_t CellLedger::NewBlock(int32_t p0) {
    int32_t id;
    if (!freeBlocks_.empty()) {
        id = freeBlocks_.back();
        freeBlocks_.pop_back();
    } else {
        id = (int32_t)blocks_.size();
        blocks_.emplace_back();
    }
    blocks_[(size_t)id].p0 = p0;
    blocks_[(size_t)id].refs.clear();
    return id;
}

int32_t CellLedger::Len(int32_t seq) const {
    const auto& c = chain_[(size_t)seq];
    if (c.empty()) return 0;
    return RefOf(blocks_[(size_t)c.back()], seq)->end;
}

void CellLedger::Append(int32_t seq, int32_t n) {
    if (n <= 0) return;
    const int32_t len = Len(seq);
    auto& c = chain_[(size_t)seq];
    if (!c.empty()) {
        Block& b = blocks_[(size_t)c.back()];
        Ref* r = RefOf(b, seq);
        // This id wrote (or shares) the block's furthest cells: its next cells continue the block. Otherwise the
        // block's further cells belong to others (this id was cut back, or copied part of it): new cells, new block.
        if (r->end == MaxEnd(b)) {
            r->end += n;
            used_ += (uint32_t)n;
            return;
        }
    }
    const int32_t id = NewBlock(len);
    blocks_[(size_t)id].refs.push_back({seq, len + n});
    chain_[(size_t)seq].push_back(id);
    used_ += (uint32_t)n;
}

void CellLedger::Truncate(int32_t seq, int32_t len) {
    auto& c = chain_[(size_t)seq];
    while (!c.empty()) {
        const int32_t id = c.back();
        Block& b = blocks_[(size_t)id];
        Ref* r = RefOf(b, seq);
        if (len >= r->end) break;
        const uint32_t before = Live(b);
        if (len > b.p0) {
            r->end = len;
            used_ -= before - Live(b);
            break;
        }
        b.refs.erase(b.refs.begin() + (r - b.refs.data()));
        used_ -= before - Live(b);
        if (b.refs.empty()) freeBlocks_.push_back(id);
        c.pop_back();
    }
}

void CellLedger::Copy(int32_t src, int32_t dst, int32_t len) {
    if (src == dst || len <= 0) return;
    for (const int32_t id : chain_[(size_t)src]) {
        Block& b = blocks_[(size_t)id];
        if (b.p0 >= len) break;
        const int32_t end = std::min(RefOf(b, src)->end, len);
        b.refs.push_back({dst, end});  // end <= the block's furthest end: no cell is added
        chain_[(size_t)dst].push_back(id);
    }
}

int32_t CellLedger::SharedLen(int32_t seq) const {
    int32_t shared = 0;
    for (const int32_t id : chain_[(size_t)seq]) {
        const Block& b = blocks_[(size_t)id];
        const int32_t own = RefOf(b, seq)->end;
        for (const Ref& r : b.refs)
            if (r.seq != seq) shared = std::max(shared, std::min(r.end, own));
    }
    return shared;
}

uint32_t CellLedger::UntaggedBy(const std::vector<bool>& keep) const {
    uint32_t n = 0;
    for (const Block& b : blocks_) {
        if (b.refs.empty()) continue;
        int32_t kept = b.p0;
        for (const Ref& r : b.refs)
            if ((size_t)r.seq < keep.size() && keep[(size_t)r.seq]) kept = std::max(kept, r.end);
        n += (uint32_t)(MaxEnd(b) - kept);
    }
    return n;
}

bool CellLedger::Check(std::string& why) const {
    uint32_t used = 0;
    std::vector<int32_t> refsSeen(blocks_.size(), 0);
    for (size_t s = 0; s < chain_.size(); s++) {
        int32_t pos = 0;
        for (const int32_t id : chain_[s]) {
            const Block& b = blocks_[(size_t)id];
            const Ref* r = RefOf(b, (int32_t)s);
            if (r == nullptr || b.p0 != pos || r->end <= b.p0) {
                why = "ledger: sequence " + std::to_string(s) + " has a broken chain at position " + std::to_string(pos);
                return false;
            }
            pos = r->end;
            refsSeen[(size_t)id]++;
        }
    }
    for (size_t id = 0; id < blocks_.size(); id++) {
        if ((size_t)refsSeen[id] != blocks_[id].refs.size()) {
            why = "ledger: block " + std::to_string(id) + " has references no chain holds";
            return false;
        }
        used += Live(blocks_[id]);
    }
    if (used != used_) {
        why = "ledger: used " + std::to_string(used_) + " but blocks hold " + std::to_string(used);
        return false;
    }
    return true;
}

// ---- PromptCache ----

PromptCache::PromptCache(uint32_t slots, uint32_t bound, uint32_t maxIds)
    : slots_(slots),
      bound_(bound),
      ids_(bound > 0 ? std::max(slots, std::min(2 * slots, maxIds)) : slots),
      ledger_(ids_),
      tokens_(ids_),
      active_(ids_, false),
      lastUse_(ids_, 0) {}

void PromptCache::Attach(llama_memory_t memory, bool staleFault) {
    memory_ = memory;
    staleFault_ = staleFault;
}

uint32_t PromptCache::Cached() const { return ledger_.UntaggedBy(active_); }

uint32_t PromptCache::Active() const { return (uint32_t)std::count(active_.begin(), active_.end(), true); }

int32_t PromptCache::CommonPrefix(const std::vector<llama_token>& prompt, int32_t seq, int32_t limit) const {
    const auto& have = tokens_[(size_t)seq];
    const int32_t n = std::min<int32_t>(limit, (int32_t)have.size());
    int32_t i = 0;
    while (i < n && prompt[(size_t)i] == have[(size_t)i]) i++;
    return i;
}

bool PromptCache::Plan(const std::vector<llama_token>& prompt, uint32_t reserved, uint64_t othersRemaining,
                       uint32_t kvSize, CachePlan& plan) const {
    plan = CachePlan();
    // The source: the longest common prefix over every id's decoded tokens, at most prompt - 1 (the last prompt
    // token is decoded for its logits).
    if (Enabled() && memory_ != nullptr && prompt.size() > 1) {
        const int32_t limit = (int32_t)prompt.size() - 1;
        for (int32_t s = 0; s < (int32_t)ids_; s++) {
            const int32_t n = CommonPrefix(prompt, s, limit);
            if (n > plan.reuse) {
                plan.reuse = n;
                plan.source = s;
            }
        }
        // Test fault: one stale cell (the next token's KV, which belongs to another token) is reused too.
        if (staleFault_ && plan.source >= 0 && plan.reuse < limit && plan.reuse < ledger_.Len(plan.source)) plan.reuse++;
    }
    // The id: an empty one (every history stays); else the source itself when no request runs on it (it loses
    // only its tail past the reused prefix); else the least recently used history.
    int32_t empty = -1, lru = -1;
    for (int32_t s = 0; s < (int32_t)ids_; s++) {
        if (active_[(size_t)s]) continue;
        if (ledger_.Len(s) == 0) {
            if (empty < 0) empty = s;
        } else if (lru < 0 || lastUse_[(size_t)s] < lastUse_[(size_t)lru]) {
            lru = s;
        }
    }
    plan.seq = empty >= 0 ? empty : plan.source >= 0 && !active_[(size_t)plan.source] ? plan.source : lru;
    if (plan.seq < 0) return false;  // every id runs a request (the engine admits at most `slots` of them)
    if (plan.source < 0) plan.reuse = 0;

    CellLedger ledger = ledger_;
    auto apply = [&](const CacheOp& op) {
        plan.ops.push_back(op);
        if (op.kind == CacheOp::Truncate) ledger.Truncate(op.seq, op.len);
        else ledger.Copy(op.src, op.seq, op.len);
    };
    if (plan.seq == plan.source) {
        if (ledger.Len(plan.seq) > plan.reuse) apply({CacheOp::Truncate, plan.seq, -1, plan.reuse});
    } else {
        if (ledger.Len(plan.seq) > 0) apply({CacheOp::Truncate, plan.seq, -1, 0});
        if (plan.reuse > 0) apply({CacheOp::Copy, plan.seq, plan.source, plan.reuse});
    }
    // Room: the cells in use, plus what running requests and this one may still write, within kvSize.
    const uint64_t need = othersRemaining + (uint64_t)reserved - (uint64_t)std::min<int32_t>(plan.reuse, (int32_t)reserved);
    if (need > kvSize) return false;
    const uint64_t limit = kvSize - need;
    if (ledger.Used() > limit) {
        std::vector<bool> keep = active_;
        keep[(size_t)plan.seq] = true;
        std::vector<CacheOp> evictions;
        PlanEviction(ledger, keep, limit, plan.source, evictions);
        plan.ops.insert(plan.ops.end(), evictions.begin(), evictions.end());
    }
    return ledger.Used() <= limit;
}

void PromptCache::PlanEviction(CellLedger& ledger, std::vector<bool> keep, uint64_t limit, int32_t last,
                               std::vector<CacheOp>& ops) const {
    std::vector<int32_t> victims;
    for (int32_t s = 0; s < (int32_t)ids_; s++)
        if (!keep[(size_t)s] && ledger.Len(s) > 0) victims.push_back(s);
    std::sort(victims.begin(), victims.end(), [&](int32_t a, int32_t b) {
        if ((a == last) != (b == last)) return b == last;  // the history a request just copied from goes last
        return lastUse_[(size_t)a] < lastUse_[(size_t)b];
    });
    for (const int32_t v : victims) {
        if (ledger.Used() <= limit) break;
        const uint64_t excess = ledger.Used() - limit;
        const int32_t len = ledger.Len(v);
        const int32_t tail = len - ledger.SharedLen(v);  // cells only v holds: its last positions
        // Cut the history from its end as far as needed (its prefix is what later prompts share), else drop it.
        const int32_t keepLen = (uint64_t)tail > excess ? len - (int32_t)excess : 0;
        ops.push_back({CacheOp::Truncate, v, -1, keepLen});
        ledger.Truncate(v, keepLen);
    }
}

bool PromptCache::MemoryRemove(int32_t seq, int32_t from) {
    if (memory_ == nullptr || seq < 0 || (uint32_t)seq >= ids_ || from < 0) return true;
    const LlamaApi& api = LlamaLib::Api();
    if (from == 0) return api.llama_memory_seq_rm(memory_, seq, -1, -1);  // a whole sequence: never fails
    return api.llama_memory_seq_rm(memory_, seq, from, -1);
}

void PromptCache::Clear(int32_t seq) {
    MemoryRemove(seq, 0);
    ledger_.Truncate(seq, 0);
    tokens_[(size_t)seq].clear();
}

void PromptCache::ApplyOp(const CacheOp& op) {
    // Every id and length was planned from the ledger; check them again, since llama.cpp asserts (aborts) on a
    // sequence id out of range.
    if (op.seq < 0 || (uint32_t)op.seq >= ids_) return;
    if (op.kind == CacheOp::Truncate) {
        const int32_t len = std::max(0, std::min(op.len, ledger_.Len(op.seq)));
        if (!MemoryRemove(op.seq, len)) {
            // This memory cannot drop part of a sequence: clear it, and keep nothing from now on.
            Clear(op.seq);
            bound_ = 0;
            return;
        }
        ledger_.Truncate(op.seq, len);
        tokens_[(size_t)op.seq].resize((size_t)len);
        return;
    }
    if (op.src < 0 || (uint32_t)op.src >= ids_ || op.src == op.seq || ledger_.Len(op.seq) != 0) return;
    const int32_t len = std::min(op.len, ledger_.Len(op.src));
    if (len <= 0) return;
    if (memory_ != nullptr) LlamaLib::Api().llama_memory_seq_cp(memory_, op.src, op.seq, 0, len);
    ledger_.Copy(op.src, op.seq, len);
    const auto& from = tokens_[(size_t)op.src];
    tokens_[(size_t)op.seq].assign(from.begin(), from.begin() + len);
}

int32_t PromptCache::Admit(const CachePlan& plan) {
    for (const CacheOp& op : plan.ops) ApplyOp(op);
    const int32_t seq = plan.seq;
    active_[(size_t)seq] = true;
    lastUse_[(size_t)seq] = ++clock_;
    if (plan.source >= 0) lastUse_[(size_t)plan.source] = clock_;
    std::string why;
    if (ledger_.Len(seq) != plan.reuse || !Verify(seq, why)) Clear(seq);  // start it cold rather than wrong
    return ledger_.Len(seq);
}

void PromptCache::Commit(int32_t seq, const llama_token* tokens, size_t n) {
    if (seq < 0 || (uint32_t)seq >= ids_ || n == 0) return;
    ledger_.Append(seq, (int32_t)n);
    auto& have = tokens_[(size_t)seq];
    have.insert(have.end(), tokens, tokens + n);
}

void PromptCache::Rollback(int32_t seq) {
    if (seq < 0 || (uint32_t)seq >= ids_) return;
    if (!MemoryRemove(seq, ledger_.Len(seq))) Clear(seq);
}

void PromptCache::Release(int32_t seq, bool keep) {
    if (seq < 0 || (uint32_t)seq >= ids_) return;
    active_[(size_t)seq] = false;
    lastUse_[(size_t)seq] = ++clock_;
    if (!keep || !Enabled()) Clear(seq);
    EnforceBound();
}

void PromptCache::EnforceBound() {
    const uint32_t cached = Cached();
    if (cached <= bound_) return;
    EvictTo(Used() - (cached - bound_));
}

bool PromptCache::EvictTo(uint64_t limit) {
    if (Used() <= limit) return true;
    CellLedger ledger = ledger_;
    std::vector<CacheOp> ops;
    PlanEviction(ledger, active_, limit, -1, ops);
    for (const CacheOp& op : ops) ApplyOp(op);
    return Used() <= limit;
}

void PromptCache::DropRetained() {
    for (int32_t s = 0; s < (int32_t)ids_; s++)
        if (!active_[(size_t)s]) Clear(s);
}

bool PromptCache::Verify(int32_t seq, std::string& why) const {
    if (memory_ == nullptr || seq < 0 || (uint32_t)seq >= ids_) return true;
    const LlamaApi& api = LlamaLib::Api();
    const llama_pos lo = api.llama_memory_seq_pos_min(memory_, seq);
    const llama_pos hi = api.llama_memory_seq_pos_max(memory_, seq);
    const int32_t len = ledger_.Len(seq);
    const bool ok = len == 0 ? hi == -1 : lo == 0 && hi == len - 1;
    if (!ok) {
        why = "sequence " + std::to_string(seq) + " holds positions " + std::to_string(lo) + ".." + std::to_string(hi) +
              " in llama.cpp's memory, but " + std::to_string(len) + " by the engine's count";
    }
    return ok;
}
