// NativeEngine: one llama_context shared by concurrent generate() calls, and the long-lived native thread
// that decodes them together, token after token (continuous batching). JS: src/native/binding.ts `NativeEngine`.
//
// Each request owns one sequence slot and KV cells (kv_unified: all sequences share one pool). A request with
// maxTokens reserves min(prompt + maxTokens, contextSize) cells when it is admitted and never runs out. A request
// without maxTokens is admitted on its prompt (prompt + 1 cells) and then takes one more cell per generated token
// while cells are free. When the pool runs short (a growing request finds no free cell, or a request waits for
// cells), each request without maxTokens that holds its fair share (kvSize / sequences cells) ends with "context";
// the others continue, but only up to their fair share. README "Concurrent requests" states the rule for users.
// Requests that find no free slot or cells wait their turn (FIFO). A request whose prompt shares a prefix with KV
// the engine still holds reuses it instead of decoding it again (native/PromptCache.h: the rule, and how cells
// are counted when sequences share them). The decode loop never calls into JavaScript:
// tokens (when the caller streams) and the final result are posted through the request's thread-safe function.
#pragma once

#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "Common.h"
#include "PromptCache.h"
#include "Sampler.h"
#include "TextStream.h"

class NativeModel;

// Every field comes from JS at construction (src/model/options.ts and limits.ts hold the defaults and ranges; the
// constructor requires them all): no second copy of a default here.
struct EngineParams {
    uint32_t kvSize;        // KV cells shared by all sequences
    uint32_t contextSize;   // max tokens of one sequence
    uint32_t batchSize;
    uint32_t sequences;
    int32_t threads;
    int32_t batchThreads;
    bool threadpool;        // one persistent ggml threadpool for this context, instead of new threads per graph
    int32_t flashAttention; // llama_flash_attn_type: -1 auto, 0 off, 1 on
    uint32_t promptCacheSize; // KV cells decoded histories may keep for reuse while no request uses them; 0: off
};

// A sampled token's log-probability under the model's raw distribution (log-softmax of its logits, before any
// sampler) and the `top` most likely tokens with theirs, most likely first (GenerateOptions.logprobs).
struct TokenLogprobs {
    float logprob = 0;
    std::vector<llama_token> topTokens;
    std::vector<float> topLogprobs;
};

struct Request {
    // Copied from JS on submit.
    uint32_t id = 0;
    std::vector<llama_token> prompt;
    SamplingParams sampling{};
    int32_t maxTokens = -1;  // -1 = until EOS / end of context (its KV cells grow, see above)
    bool stream = false;
    bool captureLogits = false;  // keep the first step's logits (PhiModel.evaluate)
    int32_t logprobs = -1;       // -1: off; else stream each token's logprob and this many top alternatives
    std::vector<float> logits;
    Napi::ThreadSafeFunction callback;  // (kind: "token"|"done"|"error", payload)

    std::atomic<bool> aborted{false};
    std::atomic<bool> paused{false};  // stream() backpressure: not decoded until resumed

    // Decode state, touched only by the engine thread.
    int32_t seq = -1;
    uint32_t reserved = 0;      // positions it may fill (its KV cells: the reused ones are shared, the rest fresh)
    int32_t cached = 0;         // prompt tokens whose KV came from the prompt cache
    bool capped = false;        // without maxTokens: the pool ran short while it ran, so it stops at its fair share
    size_t promptPos = 0;       // prompt tokens already submitted
    int32_t nPast = 0;          // positions in this sequence's KV
    int32_t batchIndex = -1;    // where this request's logits are in the current batch
    int32_t batchFrom = -1;     // its tokens in the current batch: batchCount of them from batchFrom
    int32_t batchCount = 0;
    bool generating = false;    // prompt fully decoded, at least one token sampled
    llama_token lastToken = -1; // sampled, not yet decoded
    RequestSampler sampler;     // the chain of its options, and its grammar (set at submit) if any
    std::vector<llama_token> generated;
    TextStream text;  // the text, and what of it may be streamed yet (UTF-8 and stop-string hold-back)
    int64_t tQueued = 0, tStart = 0, tFirst = 0, tEnd = 0;
    std::string finishReason;
    std::string error;
    std::string errorCode;
};

class NativeEngine : public Napi::ObjectWrap<NativeEngine> {
public:
    static Napi::Object Init(Napi::Env env, Napi::Object exports);
    explicit NativeEngine(const Napi::CallbackInfo& info);
    ~NativeEngine() override;

    // Used by the init/close workers (libuv pool threads) and the environment's cleanup hook.
    void CreateContext();  // throws std::runtime_error
    bool HasThreadpool() const { return pool_ != nullptr; }
    // Stops and joins the engine thread, answers every request left and frees the context. Idempotent and
    // thread-safe: close() (a pool thread), the cleanup hook of worker.terminate()/exit and the destructor may all
    // call it, at the same time too; the first does the work, the others wait for it.
    void StopAndJoin() noexcept;
    // Gives up this engine's owner of the model (the last owner frees it). Idempotent, thread-safe.
    void ReleaseModel() noexcept;

private:
    Napi::Value InitContext(const Napi::CallbackInfo& info);  // () => Promise<{ kvSize, batchSize, sequences }>
    Napi::Value Submit(const Napi::CallbackInfo& info);       // (tokens: Int32Array, options, callback) => id
    Napi::Value Cancel(const Napi::CallbackInfo& info);       // (id) => void
    Napi::Value Close(const Napi::CallbackInfo& info);        // () => Promise<void>
    Napi::Value Stats(const Napi::CallbackInfo& info);        // () => { active, waiting }
    Napi::Value Pause(const Napi::CallbackInfo& info);        // (id, paused: boolean) => void

    void Run();  // the engine thread
    void Admit();
    void Step();
    void GrowCells();
    bool Paused(const Request& r) const { return honorPause_ && r.paused; }  // the next token's KV cell for every growing request without maxTokens
    void PostChunk(Request& r, llama_token token, std::string text, const TokenLogprobs* logprobs = nullptr);
    void ProcessToken(Request& r, llama_token token, const TokenLogprobs* logprobs);
    void Finish(std::shared_ptr<Request> r, const std::string& reason);
    void Fail(std::shared_ptr<Request> r, const std::string& code, const std::string& message);
    void PostDone(const std::shared_ptr<Request>& r);  // the final result or error, then releases the callback
    void BuildSampler(Request& r);
    void ReleaseSequence(Request& r, bool keep);  // keep: its decoded KV stays in the prompt cache
    uint64_t Remaining() const;  // fresh cells the running requests may still write (reserved - decoded)
    int64_t FreeCells() const;   // kvSize - cells in use - Remaining(); evicting the prompt cache adds to it
    void PublishStats();         // engine thread: the cell counts Stats() reports
    static bool AbortCallback(void* data) noexcept;

    // This engine's owner of the model's weights and vocabulary (shared with the NativeModel and other engines).
    SharedModel model_;
    bool modelCounted_ = false;  // this engine is counted in model_->engines (guarded by lifeMutex_)
    EngineParams params_;
    // Set by CreateContext() when params_.threadpool and the CPU backend provides one. Declared before ctx_: the
    // context uses it, so it must outlive it.
    ThreadpoolPtr pool_;
    ContextPtr ctx_;
    llama_batch batch_{};
    bool batchAllocated_ = false;

    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::shared_ptr<Request>> waiting_;        // guarded by mutex_
    std::vector<std::shared_ptr<Request>> active_;       // engine thread only
    std::vector<Request*> inBatch_;                       // engine thread only (read by AbortCallback)
    PromptCache cache_;  // sequence ids, the KV they hold and the cells they share (engine thread only)
    std::atomic<uint64_t> statReserved_{0}, statUsed_{0}, statCached_{0};  // PublishStats() for Stats()
    bool honorPause_ = true;           // engine thread: no request waits, so paused requests may stay paused
    bool cellWaiter_ = false;          // engine thread: the head of waiting_ has a slot but not enough cells
    std::atomic<uint64_t> epoch_{0};   // bumped (under mutex_) by Submit and Pause: wakes a Step with nothing to do
    std::atomic<bool> stopping_{false};
    uint32_t nextId_ = 1;
    std::thread thread_;
    // Guards the engine's life: creating the context and thread (CreateContext), and stopping and freeing them
    // (StopAndJoin, ReleaseModel), which pool threads and the environment's cleanup may run at once.
    std::mutex lifeMutex_;
    bool stopped_ = false;   // StopAndJoin ran (guarded by lifeMutex_); CreateContext refuses afterwards
    bool initStarted_ = false;  // JS thread only: init() was called
    bool closed_ = false;       // JS thread only: close() was called
    bool cleanupHook_ = false;  // JS thread only
    // Set (under mutex_) when the engine thread ended on an exception: Submit refuses new work with this message.
    bool failed_ = false;
    std::string failure_;
    // Test-only fault injection (PHI_AGENT_TEST=1 and PHI_AGENT_TEST_FAULT=engine-throw:N): the engine thread
    // throws at its Nth loop iteration, to exercise Run()'s error path. -1: off.
    int64_t faultAt_ = -1;
    bool staleFault_ = false;  // PHI_AGENT_TEST_FAULT=prompt-cache-stale (see PromptCache::Attach)
    bool testChecks_ = false;  // PHI_AGENT_TEST=1: the KV cell ledger's consistency is checked on every loop iteration
};
