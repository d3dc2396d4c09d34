// Small helpers shared by the addon's classes.
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "LlamaLib.h"

// Owning handles with their llama free functions (resolved at run time through LlamaLib).
struct LlamaModelDeleter {
    void operator()(llama_model* model) const noexcept {
        if (model != nullptr) LlamaLib::Api().llama_model_free(model);
    }
};
struct LlamaContextDeleter {
    void operator()(llama_context* ctx) const noexcept {
        if (ctx != nullptr) LlamaLib::Api().llama_free(ctx);
    }
};
struct LlamaSamplerDeleter {
    void operator()(llama_sampler* sampler) const noexcept {
        if (sampler != nullptr) LlamaLib::Api().llama_sampler_free(sampler);
    }
};
struct ThreadpoolDeleter {
    void operator()(ggml_threadpool* pool) const noexcept {
        if (pool != nullptr) LlamaLib::Api().cpu_threadpool_free(pool);
    }
};
using ModelPtr = std::unique_ptr<llama_model, LlamaModelDeleter>;
using ThreadpoolPtr = std::unique_ptr<ggml_threadpool, ThreadpoolDeleter>;
using ContextPtr = std::unique_ptr<llama_context, LlamaContextDeleter>;
using SamplerPtr = std::unique_ptr<llama_sampler, LlamaSamplerDeleter>;

// One loaded llama_model, shared by its NativeModel and by every NativeEngine made from it (std::shared_ptr): the
// last owner to let go frees it, so no order of finalizers (at GC, worker.terminate() or process exit) can leave an
// engine on a freed model. dispose() and close() drop their owners on a libuv worker thread, never on the JS thread.
struct LoadedModel {
    explicit LoadedModel(ModelPtr m);
    llama_model* Get() const { return model.get(); }
    const llama_vocab* Vocab() const { return vocab; }
    int32_t NVocab() const { return nVocab; }

    ModelPtr model;
    const llama_vocab* vocab = nullptr;
    int32_t nVocab = 0;
    std::atomic<int> engines{0};  // engines not yet closed (NativeModel.dispose() refuses while any is left)
    // The vocabulary by first byte, for grammar sampling (native/Sampler.cpp), built on the first grammar.
    std::once_flag tokenIndexOnce;
    std::shared_ptr<const struct TokenIndex> tokenIndex;
};
using SharedModel = std::shared_ptr<LoadedModel>;

inline LoadedModel::LoadedModel(ModelPtr m) : model(std::move(m)) {
    const LlamaApi& api = LlamaLib::Api();
    vocab = api.llama_model_get_vocab(model.get());
    nVocab = api.llama_vocab_n_tokens(vocab);
}

// Drops `model` (and so frees the weights, when it was the last owner) on a libuv worker thread; the promise
// resolves on the JS thread afterwards. (NativeModel.cpp)
Napi::Promise FreeOffThread(Napi::Env env, SharedModel model);

// Runs `f`, swallowing any exception. For what node-addon-api calls from C frames on the JS thread (OnOK/OnError,
// thread-safe function calls, finalizers): while the environment goes away (worker.terminate(), exit), Napi calls
// fail and throw, and an exception past such a frame is std::terminate.
template <typename F>
void NoThrow(F&& f) noexcept {
    try {
        f();
    } catch (...) {
    }
}

// Error codes shared with src/errors.ts (PhiAgentError.code).
inline Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message) {
    Napi::Error error = Napi::Error::New(env, message);
    error.Set("code", Napi::String::New(env, code));
    return error;
}
