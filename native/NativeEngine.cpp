#include "NativeEngine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <mutex>
#include <set>
#include <stdexcept>

#include "NativeModel.h"

namespace {

int64_t NowUs() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Engines whose thread may be running. process.exit() calls exit(), which runs the static destructors of ggml's CPU
// backend while an engine thread may still be decoding on them (SIGSEGV in about half the runs of
// test/lifetime.test.ts "process exit with a live model, mid-generate"). An atexit handler, registered after ggml was
// loaded and so run before its destructors, stops every live engine first. Never freed: it is used during exit.
std::mutex& LiveMutex() {
    static std::mutex* m = new std::mutex();
    return *m;
}
std::set<NativeEngine*>& LiveEngines() {
    static std::set<NativeEngine*>* s = new std::set<NativeEngine*>();
    return *s;
}
void StopLiveEnginesAtExit() noexcept {
    try {
        std::lock_guard<std::mutex> lock(LiveMutex());
        for (NativeEngine* e : LiveEngines()) e->StopAndJoin();
        LiveEngines().clear();
    } catch (...) {
    }
}
void AddLiveEngine(NativeEngine* e) {
    static std::once_flag registered;
    std::call_once(registered, [] { std::atexit(StopLiveEnginesAtExit); });
    std::lock_guard<std::mutex> lock(LiveMutex());
    LiveEngines().insert(e);
}
void RemoveLiveEngine(NativeEngine* e) noexcept {
    try {
        std::lock_guard<std::mutex> lock(LiveMutex());
        LiveEngines().erase(e);
    } catch (...) {
    }
}

// What the engine thread hands to JS: one streamed piece, or the final result (or error) of a request.
struct Event {
    bool done = false;
    std::string text;
    llama_token token = -1;
    bool hasLogprobs = false;
    TokenLogprobs logprobs;
    std::vector<llama_token> tokens;
    std::vector<float> logits;
    std::string finishReason;
    std::string errorCode;
    std::string error;
    size_t promptTokens = 0;
    int32_t cachedTokens = 0;
    double promptMs = 0;
    double generationMs = 0;
    double queuedMs = 0;
};

// The body of CallJs (below), which keeps exceptions from crossing the thread-safe function's C frame.
void CallJsBody(Napi::Env env, Napi::Function fn, Event* event) {
    std::unique_ptr<Event> owned(event);
    if (env == nullptr || fn.IsEmpty()) return;  // environment shutting down
    Napi::Object payload = Napi::Object::New(env);
    if (!owned->done) {
        payload.Set("text", Napi::String::New(env, owned->text));
        payload.Set("token", Napi::Number::New(env, owned->token));
        if (owned->hasLogprobs) {
            const TokenLogprobs& lp = owned->logprobs;
            payload.Set("logprob", Napi::Number::New(env, lp.logprob));
            Napi::Int32Array ids = Napi::Int32Array::New(env, lp.topTokens.size());
            std::copy(lp.topTokens.begin(), lp.topTokens.end(), ids.Data());
            Napi::Float32Array lps = Napi::Float32Array::New(env, lp.topLogprobs.size());
            std::copy(lp.topLogprobs.begin(), lp.topLogprobs.end(), lps.Data());
            payload.Set("topTokens", ids);
            payload.Set("topLogprobs", lps);
        }
        fn.Call({Napi::String::New(env, "token"), payload});
        return;
    }
    if (!owned->errorCode.empty()) {
        payload.Set("code", Napi::String::New(env, owned->errorCode));
        payload.Set("message", Napi::String::New(env, owned->error));
        fn.Call({Napi::String::New(env, "error"), payload});
        return;
    }
    Napi::Int32Array tokens = Napi::Int32Array::New(env, owned->tokens.size());
    std::copy(owned->tokens.begin(), owned->tokens.end(), tokens.Data());
    payload.Set("text", Napi::String::New(env, owned->text));
    payload.Set("tokens", tokens);
    payload.Set("finishReason", Napi::String::New(env, owned->finishReason));
    if (!owned->logits.empty()) {
        Napi::Float32Array logits = Napi::Float32Array::New(env, owned->logits.size());
        std::copy(owned->logits.begin(), owned->logits.end(), logits.Data());
        payload.Set("logits", logits);
    }
    payload.Set("promptTokens", Napi::Number::New(env, (double)owned->promptTokens));
    payload.Set("cachedTokens", Napi::Number::New(env, owned->cachedTokens));
    payload.Set("promptMs", Napi::Number::New(env, owned->promptMs));
    payload.Set("generationMs", Napi::Number::New(env, owned->generationMs));
    payload.Set("queuedMs", Napi::Number::New(env, owned->queuedMs));
    fn.Call({Napi::String::New(env, "done"), payload});
}

void CallJs(Napi::Env env, Napi::Function fn, Event* event) {
    try {
        CallJsBody(env, fn, event);
    } catch (...) {
        // src/model/PhiModel.ts's callback does not throw; if it ever does, or the environment is going away, the
        // exception must stop here (past this frame it would be an uncaught N-API callback exception).
    }
}

class InitWorker : public Napi::AsyncWorker {
public:
    InitWorker(Napi::Env env, NativeEngine* engine, Napi::Object self)
        : Napi::AsyncWorker(env, "phiAgent.createContext"), deferred_(Napi::Promise::Deferred::New(env)), engine_(engine) {
        selfRef_ = Napi::Persistent(self);
    }
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
        try {
            engine_->CreateContext();
            AddLiveEngine(engine_);
        } catch (const std::exception& e) {
            SetError(e.what());
        } catch (...) {
            SetError("creating the llama.cpp context failed with an unknown native exception");
        }
    }
    void OnOK() override {
        NoThrow([&] {
            Napi::Object out = Napi::Object::New(Env());
            out.Set("threadpool", Napi::Boolean::New(Env(), engine_->HasThreadpool()));
            deferred_.Resolve(out);
        });
    }
    void OnError(const Napi::Error& error) override {
        NoThrow([&] { deferred_.Reject(MakeError(Env(), "ERR_LOAD_FAILED", error.Message()).Value()); });
    }

private:
    Napi::Promise::Deferred deferred_;
    NativeEngine* engine_;
    Napi::ObjectReference selfRef_;
};

class CloseWorker : public Napi::AsyncWorker {
public:
    CloseWorker(Napi::Env env, NativeEngine* engine, Napi::Object self, std::function<void()> onDone)
        : Napi::AsyncWorker(env, "phiAgent.closeContext"),
          deferred_(Napi::Promise::Deferred::New(env)),
          engine_(engine),
          onDone_(std::move(onDone)) {
        selfRef_ = Napi::Persistent(self);
    }
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
        engine_->StopAndJoin();
        engine_->ReleaseModel();  // off the JS thread: the last owner frees the weights here
    }
    void OnOK() override {
        NoThrow([&] {
            onDone_();
            deferred_.Resolve(Env().Undefined());
        });
    }

private:
    Napi::Promise::Deferred deferred_;
    NativeEngine* engine_;
    Napi::ObjectReference selfRef_;
    std::function<void()> onDone_;
};

// log-softmax of `logits` at `token`, and the `top` most likely tokens (ties: the lower id first).
void ComputeLogprobs(const float* logits, int32_t nVocab, llama_token token, int32_t top, TokenLogprobs& out) {
    float max = logits[0];
    for (int32_t i = 1; i < nVocab; i++) max = std::max(max, logits[i]);
    double sum = 0;
    for (int32_t i = 0; i < nVocab; i++) sum += std::exp((double)(logits[i] - max));
    const double lse = (double)max + std::log(sum);
    out.logprob = (float)((double)logits[token] - lse);
    const int32_t k = std::min(top, nVocab);
    out.topTokens.clear();
    out.topLogprobs.clear();
    if (k <= 0) return;
    // a min-heap of the k best (logit, id) pairs seen so far
    auto better = [&](llama_token a, llama_token b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    std::vector<llama_token> heap;
    heap.reserve((size_t)k);
    for (llama_token i = 0; i < nVocab; i++) {
        if ((int32_t)heap.size() < k) {
            heap.push_back(i);
            std::push_heap(heap.begin(), heap.end(), better);
        } else if (better(i, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), better);
            heap.back() = i;
            std::push_heap(heap.begin(), heap.end(), better);
        }
    }
    std::sort_heap(heap.begin(), heap.end(), better);
    for (llama_token id : heap) {
        out.topTokens.push_back(id);
        out.topLogprobs.push_back((float)((double)logits[id] - lse));
    }
}


// submit() options: every field is required (src/model/options.ts resolves the defaults; this is not a second copy).
[[noreturn]] void MissingOption(Napi::Env env, const char* key, const char* type, Napi::Value v) {
    throw Napi::TypeError::New(env, std::string("option \"") + key + "\" must be " + type + ", got " +
                                        (v.IsUndefined() ? "undefined" : v.IsNull() ? "null" : v.Type() == napi_string ? "a string" : "another type") +
                                        " (PhiModel resolves every option before calling the addon; see src/model/options.ts)");
}
double RequireNumber(Napi::Object o, const char* key) {
    Napi::Value v = o.Get(key);
    if (!v.IsNumber()) MissingOption(o.Env(), key, "a number", v);
    const double d = v.As<Napi::Number>().DoubleValue();
    if (!std::isfinite(d)) MissingOption(o.Env(), key, "a finite number", v);
    return d;
}
int64_t RequireInt(Napi::Object o, const char* key, double min, double max) {
    const double d = RequireNumber(o, key);
    if (d != std::floor(d) || d < min || d > max)
        throw Napi::RangeError::New(o.Env(), std::string("option \"") + key + "\" must be an integer from " +
                                                 std::to_string((long long)min) + " to " + std::to_string((long long)max));
    return (int64_t)d;
}
bool RequireBool(Napi::Object o, const char* key) {
    Napi::Value v = o.Get(key);
    if (!v.IsBoolean()) MissingOption(o.Env(), key, "a boolean", v);
    return v.As<Napi::Boolean>().Value();
}

// worker.terminate() or process exit with the engine still open: stop its thread before the environment goes.
void EnvCleanup(void* data) noexcept { static_cast<NativeEngine*>(data)->StopAndJoin(); }

// PHI_AGENT_TEST_FAULT=<name>, read only under PHI_AGENT_TEST=1 (test/setup.ts): whether that fault is on.
bool TestFault(const char* name) {
    const char* test = std::getenv("PHI_AGENT_TEST");
    const char* fault = std::getenv("PHI_AGENT_TEST_FAULT");
    return test != nullptr && std::string(test) == "1" && fault != nullptr && std::string(fault) == name;
}

// PHI_AGENT_TEST_FAULT=engine-throw:N, read only under PHI_AGENT_TEST=1 (test/setup.ts): the engine thread throws at
// its Nth loop iteration (test/lifetime.test.ts). -1 when off.
int64_t TestFaultAt() {
    const char* test = std::getenv("PHI_AGENT_TEST");
    const char* fault = std::getenv("PHI_AGENT_TEST_FAULT");
    if (test == nullptr || std::string(test) != "1" || fault == nullptr) return -1;
    const std::string value(fault), prefix("engine-throw:");
    if (value.compare(0, prefix.size(), prefix) != 0) return -1;
    try {
        return std::max<int64_t>(1, std::stoll(value.substr(prefix.size())));
    } catch (...) {
        return -1;
    }
}

}  // namespace

Napi::Object NativeEngine::Init(Napi::Env env, Napi::Object exports) {
    Napi::Function ctor = DefineClass(env, "NativeEngine",
                                      {
                                          InstanceMethod("init", &NativeEngine::InitContext),
                                          InstanceMethod("submit", &NativeEngine::Submit),
                                          InstanceMethod("cancel", &NativeEngine::Cancel),
                                          InstanceMethod("close", &NativeEngine::Close),
                                          InstanceMethod("stats", &NativeEngine::Stats),
                                          InstanceMethod("pause", &NativeEngine::Pause),
                                      });
    exports.Set("NativeEngine", ctor);
    return exports;
}

// new NativeEngine(model: NativeModel, { kvSize, contextSize, batchSize, sequences, threads, batchThreads, threadpool,
//                                           flashAttention: -1 auto | 0 off | 1 on, promptCacheSize })
NativeEngine::NativeEngine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeEngine>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
        Napi::TypeError::New(env, "new NativeEngine(model, options)").ThrowAsJavaScriptException();
        return;
    }
    Napi::Object modelObject = info[0].As<Napi::Object>();
    NativeModel* model = Napi::ObjectWrap<NativeModel>::Unwrap(modelObject);
    if (model == nullptr || model->Get() == nullptr) {
        MakeError(env, "ERR_DISPOSED", "the model is not loaded").ThrowAsJavaScriptException();
        return;
    }
    Napi::Object o = info[1].As<Napi::Object>();
    try {
        params_.kvSize = (uint32_t)RequireInt(o, "kvSize", 1, 4294967295.0);
        params_.contextSize = (uint32_t)RequireInt(o, "contextSize", 1, 4294967295.0);
        params_.batchSize = (uint32_t)RequireInt(o, "batchSize", 1, 4294967295.0);
        params_.sequences = (uint32_t)RequireInt(o, "sequences", 1, 4294967295.0);
        params_.threads = (int32_t)RequireInt(o, "threads", 1, 2147483647.0);
        params_.batchThreads = (int32_t)RequireInt(o, "batchThreads", 1, 2147483647.0);
        params_.threadpool = RequireBool(o, "threadpool");
        params_.flashAttention = (int32_t)RequireInt(o, "flashAttention", -1, 1);
        params_.promptCacheSize = (uint32_t)RequireInt(o, "promptCacheSize", 0, 4294967295.0);
    } catch (const Napi::Error& e) {
        e.ThrowAsJavaScriptException();
        return;
    }
    if (params_.kvSize == 0 || params_.contextSize == 0 || params_.contextSize > params_.kvSize ||
        params_.batchSize == 0 || params_.sequences == 0 || params_.sequences > params_.batchSize ||
        // llama.cpp reserves one output row per sequence in min(n_ctx, n_batch) rows: more sequences abort it
        // (GGML_ASSERT n_outputs_max; src/model/limits.ts sequencesProblem is the same rule, checked first)
        params_.sequences > params_.kvSize ||
        params_.threads <= 0 || params_.batchThreads <= 0 || params_.flashAttention < -1 || params_.flashAttention > 1) {
        Napi::RangeError::New(env, "invalid engine parameters").ThrowAsJavaScriptException();
        return;
    }
    model_ = model->Shared();  // our own owner: the weights outlive this engine whatever is finalized first
    model_->engines++;
    modelCounted_ = true;
    faultAt_ = TestFaultAt();
    staleFault_ = TestFault("prompt-cache-stale");
    testChecks_ = std::getenv("PHI_AGENT_TEST") != nullptr && std::string(std::getenv("PHI_AGENT_TEST")) == "1";
    {
        // Prefix reuse needs a memory that shares cells between sequences and drops a sequence's tail: llama.cpp's
        // plain KV cache (phi2). Recurrent and hybrid memories keep one state per sequence, and sliding-window
        // caches forget a prefix's start, so the cache stays off for them.
        const LlamaApi& api = LlamaLib::Api();
        const llama_model* m = model_->Get();
        const bool shareable = !api.llama_model_is_recurrent(m) && !api.llama_model_is_hybrid(m) && api.llama_model_n_swa(m) == 0;
        // The context's sequence ids: llama.cpp's limit, and min(kvSize, batchSize) (sequencesProblem in limits.ts)
        const uint32_t maxIds = std::min({(uint32_t)api.llama_max_parallel_sequences(), params_.kvSize, params_.batchSize});
        cache_ = PromptCache(params_.sequences, shareable ? params_.promptCacheSize : 0, std::max(maxIds, params_.sequences));
    }
    napi_add_env_cleanup_hook(env, EnvCleanup, this);
    cleanupHook_ = true;
}

// Runs on the JS thread: at GC of an engine never closed, or when the environment goes (its cleanup hook already
// stopped the thread). Must not throw: a destructor is noexcept, and this one runs inside a finalizer's C frame.
NativeEngine::~NativeEngine() {
    RemoveLiveEngine(this);
    try {
        if (cleanupHook_) napi_remove_env_cleanup_hook(Env(), EnvCleanup, this);
        cleanupHook_ = false;
    } catch (...) {
    }
    StopAndJoin();
    ReleaseModel();
}

void NativeEngine::CreateContext() {
    std::lock_guard<std::mutex> life(lifeMutex_);
    if (stopped_) throw std::runtime_error("the engine was closed before its context was created");
    const LlamaApi& api = LlamaLib::Api();
    LlamaLib::ClearLastLog();
    llama_context_params cp = api.llama_context_default_params();
    cp.n_ctx = params_.kvSize;
    cp.n_batch = params_.batchSize;
    cp.n_ubatch = params_.batchSize;
    cp.n_seq_max = cache_.Ids();  // the request slots, plus ids that only keep decoded KV (prompt cache)
    cp.n_threads = params_.threads;
    cp.n_threads_batch = params_.batchThreads;
    cp.flash_attn_type = static_cast<llama_flash_attn_type>(params_.flashAttention);
    cp.kv_unified = true;  // sequences share the cells; admission reserves them so decode never runs out
    cp.no_perf = true;
    cp.abort_callback = &NativeEngine::AbortCallback;
    cp.abort_callback_data = this;
    ctx_.reset(api.llama_init_from_model(model_->Get(), cp));
    if (!ctx_) {
        std::string log = LlamaLib::TakeLastLog();
        throw std::runtime_error("llama.cpp could not create a context of " + std::to_string(params_.kvSize) +
                                 " tokens" + (log.empty() ? "" : ": " + log));
    }
    if (api.llama_n_seq_max(ctx_.get()) != cache_.Ids()) {
        ctx_.reset();
        throw std::runtime_error("llama.cpp created a context with another number of sequences than asked for");
    }
    cache_.Attach(api.llama_get_memory(ctx_.get()), staleFault_);
    if (params_.threadpool && api.cpu_threadpool_new != nullptr) {
        // Without one, ggml starts and joins its worker threads for every graph: every token on the decode path.
        ggml_threadpool_params tpp;
        api.ggml_threadpool_params_init(&tpp, std::max(params_.threads, params_.batchThreads));
        pool_.reset(api.cpu_threadpool_new(&tpp));
        if (pool_) api.llama_attach_threadpool(ctx_.get(), pool_.get(), pool_.get());
    }
    batch_ = api.llama_batch_init((int32_t)params_.batchSize, 0, 1);
    batchAllocated_ = true;
    thread_ = std::thread([this] { Run(); });
}

void NativeEngine::ReleaseModel() noexcept {
    try {
        std::lock_guard<std::mutex> life(lifeMutex_);
        if (modelCounted_) {
            modelCounted_ = false;
            model_->engines--;
        }
        model_.reset();
    } catch (...) {
    }
}

void NativeEngine::StopAndJoin() noexcept {
    try {
        std::lock_guard<std::mutex> life(lifeMutex_);  // a second caller waits here until the first is done
        stopped_ = true;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
        // Anything still queued (the thread never ran, or raced with stop) gets an answer too.
        std::deque<std::shared_ptr<Request>> left;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            left.swap(waiting_);
        }
        for (auto& r : left) Fail(r, "ERR_DISPOSED", "the model was disposed before this generation finished");
        if (LlamaLib::IsLoaded()) {
            if (batchAllocated_) {
                LlamaLib::Api().llama_batch_free(batch_);
                batchAllocated_ = false;
            }
            cache_.Attach(nullptr, false);
            ctx_.reset();
            pool_.reset();
        }
    } catch (...) {
        // nothing here throws in practice (allocation failures aside); a noexcept caller (cleanup hook,
        // destructor) must never see it
    }
}

Napi::Value NativeEngine::InitContext(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (initStarted_ || closed_) {  // a second thread_ would std::terminate; a closed engine has nothing to init
        auto deferred = Napi::Promise::Deferred::New(env);
        deferred.Reject(MakeError(env, closed_ ? "ERR_DISPOSED" : "ERR_INVALID_STATE",
                                  closed_ ? "the engine was closed" : "init() was already called on this engine")
                            .Value());
        return deferred.Promise();
    }
    initStarted_ = true;
    auto* worker = new InitWorker(info.Env(), this, info.This().As<Napi::Object>());
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
}

// submit(tokens: Int32Array, options, callback(kind, payload)) => id
Napi::Value NativeEngine::Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (stopping_ || closed_) {
        MakeError(env, "ERR_DISPOSED", "the model was disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (failed_) {  // the engine thread is gone: nothing would ever answer this request
            MakeError(env, "ERR_GENERATION_FAILED", "the native decode loop stopped after an error (" + failure_ +
                                                         "); dispose this model and load it again")
                .ThrowAsJavaScriptException();
            return env.Undefined();
        }
    }
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsObject() || !info[2].IsFunction() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
        Napi::TypeError::New(env, "submit(tokens: Int32Array, options: object, callback: function)")
            .ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Int32Array tokens = info[0].As<Napi::Int32Array>();
    Napi::Object o = info[1].As<Napi::Object>();
    auto r = std::make_shared<Request>();
    r->prompt.assign(tokens.Data(), tokens.Data() + tokens.ElementLength());
    // Cheap guards; src/model/options.ts validates with precise messages first.
    if (r->prompt.empty() || r->prompt.size() > params_.contextSize) {
        Napi::RangeError::New(env, "prompt must have 1.." + std::to_string(params_.contextSize) + " tokens")
            .ThrowAsJavaScriptException();
        return env.Undefined();
    }
    for (llama_token t : r->prompt) {
        if (t < 0 || t >= model_->NVocab()) {
            Napi::RangeError::New(env, "prompt token id out of range").ThrowAsJavaScriptException();
            return env.Undefined();
        }
    }
    r->maxTokens = (int32_t)RequireInt(o, "maxTokens", -1, 2147483647.0);
    if (r->maxTokens == 0) throw Napi::RangeError::New(env, "submit(): \"maxTokens\" is -1 (no bound) or at least 1");
    r->stream = RequireBool(o, "stream");
    r->captureLogits = RequireBool(o, "captureLogits");
    r->logprobs = (int32_t)RequireInt(o, "logprobs", -1, 1024);  // src/model/limits.ts bounds it (OPTION_SCHEMAS.logprobs)
    if (r->logprobs >= 0 && !r->stream) throw Napi::RangeError::New(env, "submit(): \"logprobs\" needs \"stream\" (they come with the token events)");
    r->sampling.temperature = (float)RequireNumber(o, "temperature");
    r->sampling.topK = (int32_t)RequireInt(o, "topK", 0, 2147483647.0);
    r->sampling.topP = (float)RequireNumber(o, "topP");
    r->sampling.minP = (float)RequireNumber(o, "minP");
    r->sampling.repeatPenalty = (float)RequireNumber(o, "repeatPenalty");
    r->sampling.presencePenalty = (float)RequireNumber(o, "presencePenalty");
    r->sampling.frequencyPenalty = (float)RequireNumber(o, "frequencyPenalty");
    r->sampling.repeatLastN = (int32_t)RequireInt(o, "repeatLastN", 0, 2147483647.0);
    r->sampling.seed = (uint32_t)RequireInt(o, "seed", 0, 4294967295.0);
    Napi::Value stopValue = o.Get("stop");
    if (!stopValue.IsArray()) MissingOption(env, "stop", "an array of strings", stopValue);
    std::vector<std::string> stops;
    Napi::Array array = stopValue.As<Napi::Array>();
    for (uint32_t i = 0; i < array.Length(); i++) {
        Napi::Value v = array.Get(i);
        if (!v.IsString()) MissingOption(env, "stop", "an array of strings", v);
        stops.push_back(v.As<Napi::String>().Utf8Value());
    }
    r->text = TextStream(std::move(stops));
    Napi::Value grammar = o.Get("grammar");  // GBNF ("" = none), checked by src/grammar/gbnf.ts
    if (!grammar.IsString()) MissingOption(env, "grammar", "a string", grammar);
    if (const std::string text = grammar.As<Napi::String>().Utf8Value(); !text.empty()) {
        try {
            r->sampler.SetGrammar(*model_, text);
        } catch (const std::exception& e) {
            MakeError(env, "ERR_INVALID_ARGUMENT", e.what()).ThrowAsJavaScriptException();
            return env.Undefined();
        }
        r->text.StopOnlyAtMarks();  // a stop string ends the text only where the grammar's document is complete
        if (r->sampler.Complete()) r->text.MarkStop();
    }
    // KV cells: with maxTokens all it can use, up front; without, the prompt and one token, then one per token
    // (NativeEngine::GrowCells). Never more than contextSize, so every request fits an empty cache.
    const uint64_t want = (uint64_t)r->prompt.size() + (r->maxTokens < 0 ? 1 : (uint64_t)r->maxTokens);
    r->reserved = (uint32_t)std::min<uint64_t>(want, params_.contextSize);
    r->callback = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "phiAgent.generate", 0, 1);
    r->tQueued = NowUs();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        r->id = nextId_++;
        waiting_.push_back(r);
        epoch_++;
    }
    wake_.notify_one();
    return Napi::Number::New(env, r->id);
}

Napi::Value NativeEngine::Cancel(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) return env.Undefined();
    const uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& r : waiting_)
            if (r->id == id) r->aborted = true;
        for (auto& r : active_)  // read-only walk under the lock; the engine thread mutates active_ under it too
            if (r->id == id) r->aborted = true;
    }
    wake_.notify_one();
    return env.Undefined();
}

Napi::Value NativeEngine::Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) {
        auto deferred = Napi::Promise::Deferred::New(env);
        deferred.Resolve(env.Undefined());
        return deferred.Promise();
    }
    closed_ = true;
    auto* worker = new CloseWorker(env, this, info.This().As<Napi::Object>(), [this] {
        if (cleanupHook_) napi_remove_env_cleanup_hook(Env(), EnvCleanup, this);
        cleanupHook_ = false;
    });
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
}

Napi::Value NativeEngine::Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    std::lock_guard<std::mutex> lock(mutex_);
    out.Set("active", Napi::Number::New(env, (double)active_.size()));
    out.Set("waiting", Napi::Number::New(env, (double)waiting_.size()));
    out.Set("reservedCells", Napi::Number::New(env, (double)statReserved_.load()));
    out.Set("usedCells", Napi::Number::New(env, (double)statUsed_.load()));
    out.Set("cachedCells", Napi::Number::New(env, (double)statCached_.load()));
    return out;
}

// pause(id, paused): a paused request keeps its slot and cells but is not decoded (stream() backpressure).
Napi::Value NativeEngine::Pause(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBoolean()) {
        throw Napi::TypeError::New(env, "pause(id: number, paused: boolean)");
    }
    const uint32_t id = info[0].As<Napi::Number>().Uint32Value();
    const bool paused = info[1].As<Napi::Boolean>().Value();
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& r : waiting_)
            if (r->id == id) r->paused = paused;
        for (auto& r : active_)
            if (r->id == id) r->paused = paused;
        epoch_++;
    }
    wake_.notify_one();
    return env.Undefined();
}

bool NativeEngine::AbortCallback(void* data) noexcept {
    auto* self = static_cast<NativeEngine*>(data);
    if (self->stopping_) return true;
    if (self->inBatch_.empty()) return false;
    for (Request* r : self->inBatch_)
        if (!r->aborted) return false;
    return true;
}

void NativeEngine::Run() {
    std::string failure;
    try {
        for (int64_t iteration = 1;; iteration++) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [this] { return stopping_.load() || !waiting_.empty() || !active_.empty(); });
                if (stopping_) break;
            }
            if (iteration == faultAt_) throw std::runtime_error("test fault injected by PHI_AGENT_TEST_FAULT");
            Admit();
            if (!active_.empty()) Step();
            if (testChecks_) {  // the run fails loudly (every request ERR_GENERATION_FAILED) instead of computing wrong
                std::string why;
                if (!cache_.CheckLedger(why)) throw std::runtime_error("KV cell ledger broken: " + why);
            }
            PublishStats();
        }
    } catch (const std::exception& e) {
        failure = e.what();
    } catch (...) {
        failure = "unknown native exception";
    }
    try {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!failure.empty()) {
            // This thread ends here: every request it holds or would take fails now, and Submit refuses new ones,
            // so no promise waits forever and every thread-safe function is released (the event loop can exit).
            failed_ = true;
            failure_ = failure;
            for (auto& r : std::vector<std::shared_ptr<Request>>(active_))
                Fail(r, "ERR_GENERATION_FAILED", "generation failed in native code: " + failure);
            std::deque<std::shared_ptr<Request>> left;
            left.swap(waiting_);
            for (auto& r : left)
                Fail(r, "ERR_GENERATION_FAILED", "the native decode loop stopped after an error (" + failure + ")");
        }
        for (auto& r : std::vector<std::shared_ptr<Request>>(active_))
            Fail(r, "ERR_DISPOSED", "the model was disposed during this generation");
    } catch (...) {
    }
}

void NativeEngine::Admit() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        if ((*it)->aborted) {
            auto r = *it;
            it = waiting_.erase(it);
            Finish(r, "abort");
        } else {
            ++it;
        }
    }
    while (!waiting_.empty() && active_.size() < params_.sequences) {
        auto& r = waiting_.front();
        // Its sequence id, the cached prefix it reuses and the cached KV evicted to make room for the rest of it.
        CachePlan plan;
        if (!cache_.Plan(r->prompt, r->reserved, Remaining(), params_.kvSize, plan)) {
            if (!active_.empty()) break;  // it waits for running requests to end
            // Nothing runs, and any request fits an empty cache (reserved <= contextSize <= kvSize): start from one.
            cache_.DropRetained();
            if (!cache_.Plan(r->prompt, r->reserved, 0, params_.kvSize, plan)) break;
        }
        r->tStart = NowUs();
        r->seq = plan.seq;
        r->cached = cache_.Admit(plan);
        r->nPast = r->cached;
        r->promptPos = (size_t)r->cached;
        BuildSampler(*r);
        active_.push_back(r);
        waiting_.pop_front();
    }
    // A request that has a slot but not its cells makes the pool short (GrowCells): requests without maxTokens then
    // stop at their fair share, so it gets in.
    cellWaiter_ = !waiting_.empty() && active_.size() < params_.sequences;
}

void NativeEngine::GrowCells() {
    const uint32_t share = std::max<uint32_t>(1, params_.kvSize / params_.sequences);
    std::vector<std::shared_ptr<Request>> need;  // generating requests without maxTokens whose next token has no cell
    for (auto& r : active_)
        if (r->maxTokens < 0 && r->generating && !Paused(*r) && !r->aborted && (uint32_t)r->nPast + 1 > r->reserved)
            need.push_back(r);
    if (need.empty() && !cellWaiter_) return;
    // Cells only the prompt cache holds are free for the taking: evict them (LRU) before the pool counts as short.
    auto makeRoom = [&](uint64_t cells) {
        if (FreeCells() >= (int64_t)cells) return;
        const uint64_t busy = Remaining() + cells;
        cache_.EvictTo(busy >= params_.kvSize ? 0 : params_.kvSize - busy);
    };
    makeRoom(need.size());
    std::vector<std::shared_ptr<Request>> cut;
    const bool shortOfCells = cellWaiter_ || FreeCells() < (int64_t)need.size();
    if (shortOfCells) {
        for (auto& r : active_) {
            if (r->maxTokens >= 0) continue;
            if (r->reserved >= share && std::find(need.begin(), need.end(), r) != need.end()) cut.push_back(r);
            else r->capped = true;  // from now on, no further than its fair share
        }
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& r : cut) Finish(r, "context");  // frees their cells for the others
    for (auto& r : need) {
        if (std::find(cut.begin(), cut.end(), r) != cut.end()) continue;
        makeRoom(1);
        if ((r->capped && r->reserved >= share) || FreeCells() <= 0) {
            Finish(r, "context");
            continue;
        }
        r->reserved++;
    }
}

void NativeEngine::BuildSampler(Request& r) { r.sampler.Build(*model_, r.sampling, r.prompt); }

void NativeEngine::Step() {
    const LlamaApi& api = LlamaLib::Api();
    {
        std::vector<std::shared_ptr<Request>> aborted;
        for (auto& r : active_)
            if (r->aborted) aborted.push_back(r);
        if (!aborted.empty()) {
            std::lock_guard<std::mutex> lock(mutex_);
            for (auto& r : aborted) Finish(r, "abort");
        }
        if (active_.empty()) return;
    }
    const uint64_t epoch = epoch_;
    {
        // A paused request (stream() backpressure) must never block another: while any request waits for a slot
        // or cells, paused ones are decoded anyway (their chunks buffer in JS).
        std::lock_guard<std::mutex> lock(mutex_);
        honorPause_ = waiting_.empty();
    }
    GrowCells();
    if (active_.empty()) return;

    llama_batch& b = batch_;
    b.n_tokens = 0;
    inBatch_.clear();
    auto add = [&b](llama_token token, llama_pos pos, llama_seq_id seq, bool logits) {
        const int32_t i = b.n_tokens++;
        b.token[i] = token;
        b.pos[i] = pos;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = seq;
        b.logits[i] = logits ? 1 : 0;
    };
    int32_t budget = (int32_t)params_.batchSize;
    // Sequences that are generating go first (one token each), so a long prompt never stalls their tokens.
    for (auto& r : active_) {
        if (!r->generating || Paused(*r)) continue;
        r->batchIndex = b.n_tokens;
        r->batchFrom = b.n_tokens;
        r->batchCount = 1;
        add(r->lastToken, r->nPast, r->seq, true);
        r->nPast++;
        budget--;
        inBatch_.push_back(r.get());
    }
    // Then prompts, in n_batch-sized chunks; logits only for a prompt's last token.
    for (auto& r : active_) {
        if (r->generating || Paused(*r) || budget <= 0) continue;
        const size_t left = r->prompt.size() - r->promptPos;
        if (left == 0) continue;  // waiting for its first token's logits (already in this batch)
        const int32_t take = (int32_t)std::min<size_t>(left, (size_t)budget);
        r->batchFrom = b.n_tokens;
        r->batchCount = take;
        for (int32_t i = 0; i < take; i++) {
            const size_t p = r->promptPos + (size_t)i;
            add(r->prompt[p], r->nPast + i, r->seq, p == r->prompt.size() - 1);
        }
        r->promptPos += (size_t)take;
        r->nPast += take;
        budget -= take;
        r->batchIndex = r->promptPos == r->prompt.size() ? b.n_tokens - 1 : -1;
        inBatch_.push_back(r.get());
    }
    if (b.n_tokens == 0) {  // every active request is paused: sleep until a submit, pause(), cancel or stop
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] {
            if (stopping_ || epoch_ != epoch) return true;
            for (auto& r : active_)
                if (r->aborted) return true;
            return false;
        });
        return;
    }

    LlamaLib::ClearLastLog();
    const int32_t ret = api.llama_decode(ctx_.get(), b);
    if (ret != 0) {
        std::vector<std::shared_ptr<Request>> involved;
        for (auto& r : active_)
            if (std::find(inBatch_.begin(), inBatch_.end(), r.get()) != inBatch_.end()) involved.push_back(r);
        inBatch_.clear();
        // llama.cpp keeps the ubatches it finished before an abort or error: drop them, so that each sequence holds
        // exactly what it held before this batch (what the prompt cache counts), and its request can go on from there.
        for (auto& r : involved) {
            cache_.Rollback(r->seq);
            r->nPast = cache_.Len(r->seq);
            if (!r->generating) r->promptPos = (size_t)r->nPast;
            r->batchIndex = -1;
            r->batchFrom = -1;
            r->batchCount = 0;
        }
        std::lock_guard<std::mutex> lock(mutex_);
        if (ret == 2) {  // aborted: every request in the batch was cancelled (or we are stopping)
            for (auto& r : involved)
                if (r->aborted) Finish(r, "abort");
            return;
        }
        std::string log = LlamaLib::TakeLastLog();
        const std::string why = ret == 1 ? "no free KV cache slot for the batch" : "llama_decode returned " + std::to_string(ret);
        for (auto& r : involved)
            Fail(r, "ERR_GENERATION_FAILED", "decoding failed: " + why + (log.empty() ? "" : " (" + log + ")"));
        return;
    }
    // The batch's tokens are in the KV cache now: the prompt cache counts them (and can hand them to later requests).
    std::vector<std::pair<std::shared_ptr<Request>, std::string>> broken;
    for (auto& r : active_) {
        if (r->batchCount == 0) continue;
        cache_.Commit(r->seq, &b.token[r->batchFrom], (size_t)r->batchCount);
        r->batchFrom = -1;
        r->batchCount = 0;
        std::string why;
        if (!cache_.Verify(r->seq, why)) broken.emplace_back(r, why);
    }
    inBatch_.clear();
    if (!broken.empty()) {  // never expected: the engine's count of a sequence's KV is wrong, so its output would be
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto& [r, why] : broken) {
            if (r->batchIndex >= 0) r->batchIndex = -1;
            Fail(r, "ERR_GENERATION_FAILED", "KV cache bookkeeping error: " + why);
        }
    }

    std::vector<std::shared_ptr<Request>> ready;
    for (auto& r : active_)
        if (r->batchIndex >= 0) ready.push_back(r);
    for (auto& r : ready) {
        if (r->captureLogits && r->logits.empty()) {
            const float* logits = api.llama_get_logits_ith(ctx_.get(), r->batchIndex);
            if (logits != nullptr) r->logits.assign(logits, logits + model_->NVocab());
        }
        llama_token token;
        try {
            token = r->sampler.Sample(ctx_.get(), r->batchIndex);
        } catch (const std::exception& e) {  // the grammar allows no token: this request fails, the others go on
            r->batchIndex = -1;
            std::lock_guard<std::mutex> lock(mutex_);
            Fail(r, "ERR_GENERATION_FAILED", std::string("sampling failed: ") + e.what());
            continue;
        }
        TokenLogprobs lp;
        if (r->logprobs >= 0) {
            const float* logits = api.llama_get_logits_ith(ctx_.get(), r->batchIndex);
            if (logits != nullptr) ComputeLogprobs(logits, model_->NVocab(), token, r->logprobs, lp);
        }
        r->batchIndex = -1;
        if (!r->generating) {
            r->generating = true;
            r->tFirst = NowUs();
        }
        ProcessToken(*r, token, r->logprobs >= 0 ? &lp : nullptr);
        if (!r->finishReason.empty()) {
            std::lock_guard<std::mutex> lock(mutex_);
            Finish(r, r->finishReason);
        }
    }
}

// Decides what `token` means for the request; sets finishReason when it ends (Step() then finishes it).
void NativeEngine::ProcessToken(Request& r, llama_token token, const TokenLogprobs* logprobs) {
    const LlamaApi& api = LlamaLib::Api();
    if (api.llama_vocab_is_eog(model_->Vocab(), token)) {
        r.finishReason = "eos";
        return;
    }
    r.generated.push_back(token);
    char buffer[256];
    int32_t n = api.llama_token_to_piece(model_->Vocab(), token, buffer, sizeof buffer, 0, false);
    std::string piece;
    if (n < 0) {
        piece.resize((size_t)-n);
        n = api.llama_token_to_piece(model_->Vocab(), token, piece.data(), (int32_t)piece.size(), 0, false);
        piece.resize(n > 0 ? (size_t)n : 0);
    } else {
        piece.assign(buffer, (size_t)n);
    }
    const bool length = r.maxTokens >= 0 && r.generated.size() >= (size_t)r.maxTokens;
    const bool context = (uint32_t)r.nPast >= params_.contextSize;  // no room to decode it
    std::string chunk = r.text.Next(piece, length || context);
    if (r.sampler.HasGrammar() && !r.text.Finished() && r.sampler.Complete()) r.text.MarkStop();
    if (r.text.Stopped()) r.finishReason = "stop";
    else if (length) r.finishReason = "length";
    else if (context) r.finishReason = "context";
    else r.lastToken = token;
    if (r.stream) PostChunk(r, token, std::move(chunk), logprobs);  // one chunk per generated token, "" while held back
}

void NativeEngine::PostChunk(Request& r, llama_token token, std::string text, const TokenLogprobs* logprobs) {
    auto* event = new Event();
    event->token = token;
    event->text = std::move(text);
    if (logprobs != nullptr) {
        event->hasLogprobs = true;
        event->logprobs = *logprobs;
    }
    if (r.callback.NonBlockingCall(event, CallJs) != napi_ok) delete event;
}

void NativeEngine::ReleaseSequence(Request& r, bool keep) {
    if (r.seq < 0) return;
    cache_.Release(r.seq, keep);
    r.seq = -1;
}

uint64_t NativeEngine::Remaining() const {
    uint64_t n = 0;
    for (const auto& r : active_) {
        if (r->seq < 0) continue;
        const int64_t left = (int64_t)r->reserved - cache_.Len(r->seq);
        if (left > 0) n += (uint64_t)left;
    }
    return n;
}

void NativeEngine::PublishStats() {
    statUsed_ = cache_.Used();
    statReserved_ = cache_.Used() + Remaining();
    statCached_ = cache_.Cached();
}

int64_t NativeEngine::FreeCells() const {
    return (int64_t)params_.kvSize - (int64_t)cache_.Used() - (int64_t)Remaining();
}

// Caller holds mutex_ (or is the only thread left).
void NativeEngine::Finish(std::shared_ptr<Request> r, const std::string& reason) {
    r->finishReason = reason;
    r->tEnd = NowUs();
    // What the stream still held back (a possible stop-string start, an incomplete character) is text now: one
    // last chunk that belongs to no token (token -1), so the chunks add up to the result's text.
    std::string rest = r->text.Finish();
    if (r->stream && !rest.empty()) PostChunk(*r, -1, std::move(rest));
    ReleaseSequence(*r, true);
    active_.erase(std::remove(active_.begin(), active_.end(), r), active_.end());
    PublishStats();  // before the result reaches JS, so stats() then shows what this request left in the cache
    PostDone(r);
}

void NativeEngine::Fail(std::shared_ptr<Request> r, const std::string& code, const std::string& message) {
    r->errorCode = code;
    r->error = message;
    r->tEnd = NowUs();
    ReleaseSequence(*r, false);
    active_.erase(std::remove(active_.begin(), active_.end(), r), active_.end());
    PublishStats();  // before the result reaches JS, so stats() then shows what this request left in the cache
    PostDone(r);
}

void NativeEngine::PostDone(const std::shared_ptr<Request>& r) {
    auto* event = new Event();
    event->done = true;
    if (!r->errorCode.empty()) {
        event->errorCode = r->errorCode;
        event->error = r->error;
    } else {
        event->text = r->text.Text();
        event->tokens = r->generated;
        event->finishReason = r->finishReason;
        event->logits = std::move(r->logits);
        event->promptTokens = r->prompt.size();
        event->cachedTokens = r->cached;
        const int64_t start = r->tStart ? r->tStart : r->tEnd;
        const int64_t first = r->tFirst ? r->tFirst : r->tEnd;
        event->promptMs = (double)(first - start) / 1000.0;
        event->generationMs = (double)(r->tEnd - first) / 1000.0;
        event->queuedMs = (double)(start - r->tQueued) / 1000.0;
    }
    if (r->callback.NonBlockingCall(event, CallJs) != napi_ok) delete event;
    r->callback.Release();
    r->sampler.Reset();
}
