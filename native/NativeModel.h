// NativeModel: one llama_model (weights + vocabulary). JS: src/native/binding.ts `NativeModel`.
#pragma once

#include <napi.h>

#include <atomic>
#include <mutex>
#include <string>

#include "Common.h"

struct LoadBaton {  // everything the load needs, copied off the JS values before queueing
    std::string path;
    int32_t gpuLayers = 0;
    int32_t deviceIndex = -1;  // index into ggml's device list; -1 = CPU only
    bool useMmap = true;
    bool repack = true;  // llama.cpp's extra CPU buffer types: weights repacked for faster kernels (a copy, not mmapped)
};

class NativeModel : public Napi::ObjectWrap<NativeModel> {
public:
    static Napi::Object Init(Napi::Env env, Napi::Object exports);
    explicit NativeModel(const Napi::CallbackInfo& info);
    ~NativeModel() override;

    llama_model* Get() const { return model_.get(); }
    const llama_vocab* Vocab() const { return vocab_; }
    int32_t NVocab() const { return nVocab_; }
    // Engines created on this model; the model is freed only when none is left.
    void Retain() { engines_++; }
    void Release() { engines_--; }

    // Used by the load worker (off the main thread): set on success.
    void SetLoaded(ModelPtr model);
    std::atomic<bool> abortLoad{false};
    std::atomic<bool> loading{false};

private:
    Napi::Value Load(const Napi::CallbackInfo& info);       // (path, {gpuLayers, deviceIndex, mmap}, onProgress?) => Promise<void>
    Napi::Value AbortLoad(const Napi::CallbackInfo& info);  // () => void
    Napi::Value Info(const Napi::CallbackInfo& info);       // () => metadata object
    Napi::Value Meta(const Napi::CallbackInfo& info);       // (key) => string | undefined
    Napi::Value Tokenize(const Napi::CallbackInfo& info);   // (text, special) => Int32Array
    Napi::Value Detokenize(const Napi::CallbackInfo& info); // (Int32Array, special) => string
    Napi::Value Dispose(const Napi::CallbackInfo& info);    // () => void (engines must be closed first)

    bool CheckLoaded(Napi::Env env);

    ModelPtr model_;
    const llama_vocab* vocab_ = nullptr;
    int32_t nVocab_ = 0;
    std::atomic<int> engines_{0};
};
