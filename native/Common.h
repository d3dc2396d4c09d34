// Small helpers shared by the addon's classes.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
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

// Error codes shared with src/errors.ts (PhiAgentError.code).
inline Napi::Error MakeError(Napi::Env env, const std::string& code, const std::string& message) {
    Napi::Error error = Napi::Error::New(env, message);
    error.Set("code", Napi::String::New(env, code));
    return error;
}
