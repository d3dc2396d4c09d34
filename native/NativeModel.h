// NativeModel: one llama_model (weights + vocabulary). JS: src/native/binding.ts `NativeModel`.
#pragma once

#include <napi.h>

#include <atomic>
#include <mutex>
#include <string>

#include "Common.h"

struct LoadBaton {  // everything the load needs, copied off the JS values before queueing
    std::string path;
    // A duplicate of the descriptor that src/gguf/validate.ts read and checked (-1: open `path`). The load reads this
    // very file, whatever happens to `path` meanwhile (renames, swaps); the load worker closes it.
    int fd = -1;
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

    // The loaded model (null before load and after dispose); engines keep their own owner of it.
    const SharedModel& Shared() const { return model_; }
    llama_model* Get() const { return model_ ? model_->Get() : nullptr; }

    // Set by the load worker on the JS thread (OnOK / OnError).
    void SetLoaded(ModelPtr model);
    std::atomic<bool> abortLoad{false};
    bool loading = false;  // JS thread only

private:
    Napi::Value Load(const Napi::CallbackInfo& info);       // (path, {fd?, gpuLayers, deviceIndex, mmap, repack}, onProgress?) => Promise<void>
    Napi::Value AbortLoad(const Napi::CallbackInfo& info);  // () => void
    Napi::Value Info(const Napi::CallbackInfo& info);       // () => metadata object
    Napi::Value Meta(const Napi::CallbackInfo& info);       // (key) => string | undefined
    Napi::Value Tokenize(const Napi::CallbackInfo& info);   // (text, special) => Int32Array
    Napi::Value Detokenize(const Napi::CallbackInfo& info); // (Int32Array, special) => string
    Napi::Value Dispose(const Napi::CallbackInfo& info);    // () => Promise<void> (engines must be closed first)

    bool CheckLoaded(Napi::Env env);

    SharedModel model_;
};
