// NativeEngine: one llama_context shared by concurrent generate() calls, and the long-lived native thread
// that decodes them together, token after token (continuous batching). JS: src/native/binding.ts `NativeEngine`.
//
// Each request owns one sequence slot and reserves min(prompt + maxTokens, contextSize) KV cells; a request that
// finds no free slot or not enough cells waits its turn (FIFO). The decode loop never calls into JavaScript: tokens
// (when the caller streams) and the final result are posted through the request's thread-safe function.
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

class NativeModel;

struct EngineParams {
    uint32_t kvSize = 2048;       // KV cells shared by all sequences
    uint32_t contextSize = 2048;  // max tokens of one sequence
    uint32_t batchSize = 512;
    uint32_t sequences = 8;
    int32_t threads = 4;
    int32_t batchThreads = 4;
    bool threadpool = true;  // one persistent ggml threadpool for this context, instead of new threads per graph
    int32_t flashAttention = -1;  // llama_flash_attn_type: -1 auto, 0 off, 1 on
};

struct SamplingParams {
    float temperature = 0.0f;
    int32_t topK = 0;
    float topP = 1.0f;
    float minP = 0.0f;
    float repeatPenalty = 1.0f;
    float presencePenalty = 0.0f;
    float frequencyPenalty = 0.0f;
    int32_t repeatLastN = 64;
    uint32_t seed = LLAMA_DEFAULT_SEED;
};

struct Request {
    // Copied from JS on submit.
    uint32_t id = 0;
    std::vector<llama_token> prompt;
    SamplingParams sampling;
    int32_t maxTokens = -1;  // -1 = until EOS / end of context
    std::vector<std::string> stops;
    bool stream = false;
    bool captureLogits = false;  // keep the first step's logits (PhiModel.evaluate)
    std::vector<float> logits;
    Napi::ThreadSafeFunction callback;  // (kind: "token"|"done"|"error", payload)

    std::atomic<bool> aborted{false};

    // Decode state, touched only by the engine thread.
    int32_t seq = -1;
    uint32_t reserved = 0;
    size_t promptPos = 0;       // prompt tokens already submitted
    int32_t nPast = 0;          // positions in this sequence's KV
    int32_t batchIndex = -1;    // where this request's logits are in the current batch
    bool generating = false;    // prompt fully decoded, at least one token sampled
    llama_token lastToken = -1; // sampled, not yet decoded
    SamplerPtr sampler;
    std::vector<llama_token> generated;
    std::string text;     // committed text (complete UTF-8, stop strings cut)
    std::string pending;  // bytes of an incomplete UTF-8 character
    size_t streamed = 0;  // bytes of `text` already posted to JS
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

    // Used by the init/close workers.
    void CreateContext();  // throws std::runtime_error
    bool HasThreadpool() const { return pool_ != nullptr; }
    void StopAndJoin();

private:
    Napi::Value InitContext(const Napi::CallbackInfo& info);  // () => Promise<{ kvSize, batchSize, sequences }>
    Napi::Value Submit(const Napi::CallbackInfo& info);       // (tokens: Int32Array, options, callback) => id
    Napi::Value Cancel(const Napi::CallbackInfo& info);       // (id) => void
    Napi::Value Close(const Napi::CallbackInfo& info);        // () => Promise<void>
    Napi::Value Stats(const Napi::CallbackInfo& info);        // () => { active, waiting }

    void Run();  // the engine thread
    void Admit();
    void Step();
    void ProcessToken(Request& r, llama_token token);
    void Finish(std::shared_ptr<Request> r, const std::string& reason);
    void Fail(std::shared_ptr<Request> r, const std::string& code, const std::string& message);
    void PostDone(const std::shared_ptr<Request>& r);  // the final result or error, then releases the callback
    void BuildSampler(Request& r);
    void ReleaseSequence(Request& r);
    static bool AbortCallback(void* data) noexcept;

    NativeModel* model_ = nullptr;
    Napi::ObjectReference modelRef_;
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
    std::vector<bool> seqUsed_;
    uint32_t reservedCells_ = 0;
    std::atomic<bool> stopping_{false};
    uint32_t nextId_ = 1;
    std::thread thread_;
    bool closed_ = false;
    bool cleanupHook_ = false;
};
