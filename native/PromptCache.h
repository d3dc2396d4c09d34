// PromptCache: KV reuse across requests that share a prompt prefix. Owned and called by native/NativeEngine.cpp on
// its engine thread only (no locking here).
//
// The engine's one llama_context has kv_unified on: every sequence id tags cells of one pool. Ids 0..sequences-1 are
// enough for the requests that run at once; with the cache on, the context gets up to `sequences` more ids, so that
// more decoded histories can be kept than requests run. A request holds one id while it runs; when it ends, the id
// keeps the KV of every token it decoded (its retained history: prompt and generated) until evicted. A new request
// reuses the longest common prefix of its prompt with any id's history (the last request of the slot it gets,
// another retained history, or a running request's decoded tokens), at most prompt - 1 tokens (the last one is
// decoded for its logits). The id it gets: an empty one, else the id it reuses from (cut after the reused prefix)
// when no request runs on it, else the least recently used history. The copy is llama_memory_seq_cp(src, dst, 0, n):
// in a unified cache (one stream) it only adds `dst` to the same cells, so no data moves and no cell is taken; two
// requests can share one prefix at once, and evicting the history they copied from frees none of the cells they
// use. (Across streams, i.e. without kv_unified, llama.cpp copies buffers and asserts on a partial copy; the engine
// always creates its context unified.)
//
// llama.cpp aborts (GGML_ASSERT) on a sequence id outside [0, n_seq_max) in seq_rm/seq_cp/seq_pos_*: every id here
// is checked against Ids(), which the engine checks equals the context's llama_n_seq_max. A partial seq_rm that the
// memory refuses (it returns false: recurrent memories) turns the cache off. After every admission and decode the
// positions llama.cpp holds for a sequence are compared with the ledger's (Verify).
//
// Cells: CellLedger counts the physical cells exactly (a cell lives while any id tags it). The engine keeps
//   Used() + Σ over running requests (reserved - decoded) <= kvSize
// so decode never runs out: each running request still writes at most reserved - decoded fresh cells. Cells only
// retained histories hold (Cached()) are at most `bound` (LRU histories are cut from their tail, then dropped) and
// are evicted, LRU first, whenever a request needs room. bound 0: no cache (no extra ids, nothing kept or reused).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "LlamaLib.h"

// Which cells exist and which sequence ids tag them, for sequences that hold positions 0..len-1 and change only by
// appending, truncating, copying a prefix into an empty id and removing. A Block is a run of cells written by one
// id at positions p0, p0+1, ...; each id tagging it covers a prefix of it ([p0, end)), so the block's live cells are
// p0..max(end)-1. Every position of an id is in exactly one block of its chain.
class CellLedger {
public:
    explicit CellLedger(uint32_t sequences = 0);
    uint32_t Used() const { return used_; }
    int32_t Len(int32_t seq) const;
    void Append(int32_t seq, int32_t n);
    void Truncate(int32_t seq, int32_t len);      // keeps positions [0, len)
    void Copy(int32_t src, int32_t dst, int32_t len);  // dst must be empty; shares src's cells [0, len)
    // Positions [0, n) of `seq` that some other id tags too (a prefix: sharing only ever starts at position 0).
    int32_t SharedLen(int32_t seq) const;
    // Cells that no id in `keep` tags (what removing every other id would free).
    uint32_t UntaggedBy(const std::vector<bool>& keep) const;
    // Consistency of the structure itself (tests and debug checks).
    bool Check(std::string& why) const;

private:
    struct Ref {
        int32_t seq;
        int32_t end;
    };
    struct Block {
        int32_t p0 = 0;
        std::vector<Ref> refs;
    };
    static int32_t MaxEnd(const Block& b);
    static uint32_t Live(const Block& b) { return b.refs.empty() ? 0u : (uint32_t)(MaxEnd(b) - b.p0); }
    Ref* RefOf(Block& b, int32_t seq);
    const Ref* RefOf(const Block& b, int32_t seq) const;
    int32_t NewBlock(int32_t p0);

    std::vector<Block> blocks_;
    std::vector<int32_t> freeBlocks_;
    std::vector<std::vector<int32_t>> chain_;  // per id: its blocks in position order
    uint32_t used_ = 0;
};

// One step of an admission or eviction, applied to llama.cpp's memory and to the ledger alike.
struct CacheOp {
    enum Kind { Truncate, Copy } kind;
    int32_t seq;   // Truncate: the id; Copy: the destination
    int32_t src;   // Copy: the source
    int32_t len;   // Truncate: positions kept; Copy: positions copied
};

struct CachePlan {
    int32_t seq = -1;     // the id the request gets
    int32_t reuse = 0;    // prompt tokens whose KV it copies
    int32_t source = -1;  // the id they come from (-1: none)
    std::vector<CacheOp> ops;
};

class PromptCache {
public:
    // `slots`: requests decoded at once. `bound`: cells retained histories may hold (0: off; also pass 0 for a model
    // whose memory cannot share cells or drop a sequence's tail). `maxIds`: the most sequence ids the context may
    // have (llama.cpp's LLAMA_MAX_SEQ and min(kvSize, batchSize): src/model/limits.ts sequencesProblem).
    PromptCache(uint32_t slots = 1, uint32_t bound = 0, uint32_t maxIds = 1);

    // The context's n_seq_max: slots, plus up to `slots` ids for retained histories when the cache is on.
    uint32_t Ids() const { return ids_; }
    bool Enabled() const { return bound_ > 0; }
    // After the context exists (`memory`: its llama_get_memory), and nullptr before it is freed. Test fault
    // "prompt-cache-stale" (`staleFault`): reuse one token past the common prefix (a stale cell), which the
    // greedy-equality test must catch.
    void Attach(llama_memory_t memory, bool staleFault);

    uint32_t Used() const { return ledger_.Used(); }
    uint32_t Cached() const;  // cells that only retained histories hold (evictable)
    int32_t Len(int32_t seq) const { return ledger_.Len(seq); }
    uint32_t Active() const;

    // Plans the admission of a request: the id it gets, the prefix it reuses, and the evictions that make room for
    // `reserved` positions when running requests still need `othersRemaining` fresh cells. False: it does not fit
    // even with every retained history evicted (it waits).
    bool Plan(const std::vector<llama_token>& prompt, uint32_t reserved, uint64_t othersRemaining, uint32_t kvSize,
              CachePlan& plan) const;
    // Performs a plan: the memory operations, then the id is marked as running. Returns the positions now in the id
    // (the plan's reuse, or 0 when llama.cpp's memory did not end up as planned and the id was cleared instead).
    int32_t Admit(const CachePlan& plan);
    // After a successful llama_decode: `tokens` were decoded at the id's next positions.
    void Commit(int32_t seq, const llama_token* tokens, size_t n);
    // After an aborted or failed llama_decode: llama.cpp may keep part of the batch; drop it (positions >= Len(seq)).
    void Rollback(int32_t seq);
    // The request on `seq` ended. keep: its decoded KV stays as a retained history (the bound then applies);
    // otherwise the id is cleared.
    void Release(int32_t seq, bool keep);
    // Evicts retained histories (LRU first, each cut from its tail before it is dropped) until Used() <= limit.
    // False if that is not possible.
    bool EvictTo(uint64_t limit);
    // Checks that llama.cpp's memory holds exactly the positions the ledger says for `seq`.
    bool Verify(int32_t seq, std::string& why) const;
    // The ledger's own consistency (run by the engine on every loop iteration under PHI_AGENT_TEST=1).
    bool CheckLedger(std::string& why) const { return ledger_.Check(why); }
    // Drops every retained history (ids no request runs on), in llama.cpp's memory and in the ledger.
    void DropRetained();

private:
    int32_t CommonPrefix(const std::vector<llama_token>& prompt, int32_t seq, int32_t limit) const;
    // Cuts and drops retained histories of `ledger` (LRU first, never `pinned`) until ledger.Used() <= limit.
    void PlanEviction(CellLedger& ledger, std::vector<bool> keep, uint64_t limit, int32_t pinned,
                      std::vector<CacheOp>& ops) const;
    void ApplyOp(const CacheOp& op);
    bool MemoryRemove(int32_t seq, int32_t from);  // llama_memory_seq_rm(seq, from, -1), validated
    void Clear(int32_t seq);
    void EnforceBound();

    uint32_t slots_;
    uint32_t bound_;
    uint32_t ids_;
    llama_memory_t memory_ = nullptr;
    bool staleFault_ = false;
    CellLedger ledger_;
    std::vector<std::vector<llama_token>> tokens_;  // per id: the tokens whose KV it holds, positions 0..n-1
    std::vector<bool> active_;                      // per id: a running request holds it
    std::vector<uint64_t> lastUse_;                 // per id: LRU clock
    uint64_t clock_ = 0;
};
