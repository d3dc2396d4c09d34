#include "NativeModel.h"

#include "FilePages.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <vector>

#if !defined(_WIN32)
#include <unistd.h>
#endif

namespace {

// What one load shares between its worker (the pool thread, then OnOK/OnError on the JS thread) and its progress
// function (whose finalizer runs on the JS thread once every queued onProgress call was delivered). The promise
// settles when both are done: no onProgress call arrives after load() settled, and an onProgress that throws
// stops the load and rejects it (ERR_LOAD_FAILED, the thrown value as `cause`) instead of being reported as an
// uncaught N-API callback exception (DEP0168, or process death under --force-node-api-uncaught-exceptions-policy).
// Created, touched and destroyed on the JS thread only (the pool thread copies the shared_ptr, never drops the last).
struct LoadState {
    explicit LoadState(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

    void MaybeSettle(Napi::Env env) noexcept {
        if (!workDone || !progressDone || settled) return;
        settled = true;
        try {
            owner->loading = false;
            if (callbackThrew) {
                if (loaded) FreeOffThread(env, std::make_shared<LoadedModel>(std::move(loaded)));
                Napi::Error error = MakeError(env, "ERR_LOAD_FAILED", "onProgress threw (" + callbackMessage +
                                                                          "); the model load was stopped");
                if (!callbackError.IsEmpty()) error.Set("cause", callbackError.Value().Get("value"));
                deferred.Reject(error.Value());
            } else if (!error.empty()) {
                deferred.Reject(MakeError(env, aborted ? "ERR_ABORTED" : "ERR_LOAD_FAILED", error).Value());
            } else if (owner->abortLoad.load()) {  // aborted (or disposed) after llama.cpp's last progress call
                FreeOffThread(env, std::make_shared<LoadedModel>(std::move(loaded)));
                deferred.Reject(MakeError(env, "ERR_ABORTED", "The model load was aborted").Value());
            } else {
                owner->SetLoaded(std::move(loaded));
                deferred.Resolve(env.Undefined());
            }
        } catch (...) {
            // the environment is going away (worker.terminate(), exit): nobody is left to tell
        }
        NoThrow([&] {
            callbackError.Reset();
            ownerRef.Reset();
        });
    }

    Napi::Promise::Deferred deferred;
    NativeModel* owner = nullptr;
    Napi::ObjectReference ownerRef;  // keeps the JS object (and so `owner`) alive until the load settles
    bool workDone = false;
    bool progressDone = true;
    bool settled = false;
    ModelPtr loaded;  // set by Execute on success, handed to the NativeModel in MaybeSettle
    std::string error;
    bool aborted = false;
    bool callbackThrew = false;
    std::string callbackMessage;
    Napi::ObjectReference callbackError;  // { value: what onProgress threw } (a reference cannot hold a primitive)
};

// The message of a thrown JS value, without throwing again.
std::string DescribeThrown(Napi::Env env, Napi::Value value) {
    try {
        if (value.IsObject()) {
            Napi::Value message = value.As<Napi::Object>().Get("message");
            if (message.IsString()) return message.As<Napi::String>().Utf8Value();
        }
        if (value.IsString()) return value.As<Napi::String>().Utf8Value();
        return value.ToString().Utf8Value();
    } catch (...) {
        return "a value that cannot be printed";
    }
}

// Loads the weights on a libuv worker thread. Progress reaches JS through a thread-safe function;
// AbortLoad() flips an atomic that llama.cpp's progress callback reads, which makes the load return null.
class LoadWorker : public Napi::AsyncWorker {
public:
    LoadWorker(Napi::Env env, NativeModel* owner, Napi::Object ownerObject, LoadBaton baton, Napi::Function onProgress)
        : Napi::AsyncWorker(env, "phiAgent.loadModel"),
          state_(std::make_shared<LoadState>(env)),
          owner_(owner),
          baton_(std::move(baton)),
          pages_(baton_.path, baton_.fd) {
        // Weights copied out of the mapping (repacked for the CPU, or offloaded to a GPU) leave their file pages
        // resident for nothing: give them back while loading, so that the peak RSS stays near one copy.
        releasePages_ = baton_.useMmap && (baton_.repack || baton_.gpuLayers != 0);
        state_->owner = owner;
        state_->ownerRef = Napi::Persistent(ownerObject);
        if (!onProgress.IsEmpty()) {
            auto* context = new std::shared_ptr<LoadState>(state_);
            progress_ = Napi::ThreadSafeFunction::New(
                env, onProgress, "phiAgent.loadProgress", 0, 1, context,
                [](Napi::Env env, std::shared_ptr<LoadState>* context) {
                    std::shared_ptr<LoadState> state = std::move(*context);
                    delete context;
                    state->progressDone = true;
                    state->MaybeSettle(env);
                });
            hasProgress_ = true;
            state_->progressDone = false;
        }
    }

    ~LoadWorker() override {
        CloseFd();
    }

    Napi::Promise Promise() { return state_->deferred.Promise(); }

    void Execute() override {
        try {
            Load();
        } catch (const std::exception& e) {
            SetError(std::string("model load failed: ") + e.what());
        } catch (...) {
            SetError("model load failed with an unknown native exception");
        }
        CloseFd();
        // The progress function's finalizer runs once its queued calls are delivered; the load settles after it.
        if (hasProgress_) progress_.Release();
    }

    void OnOK() override {
        state_->workDone = true;
        state_->loaded = std::move(loaded_);
        state_->MaybeSettle(Env());
    }

    void OnError(const Napi::Error& error) override {
        state_->workDone = true;
        NoThrow([&] { state_->error = error.Message(); });
        if (state_->error.empty()) state_->error = "model load failed";
        state_->aborted = aborted_;
        state_->MaybeSettle(Env());
    }

private:
    void Load() {
        const LlamaApi& api = LlamaLib::Api();
        LlamaLib::ClearLastLog();
        llama_model_params params = api.llama_model_default_params();
        params.n_gpu_layers = baton_.gpuLayers;
        params.load_mode = baton_.useMmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
        params.use_extra_bufts = baton_.repack;
        // devices: NULL-terminated list; an empty list keeps everything on the CPU.
        ggml_backend_dev_t devices[2] = {nullptr, nullptr};
        if (baton_.deviceIndex >= 0 && (size_t)baton_.deviceIndex < api.ggml_backend_dev_count()) {
            devices[0] = api.ggml_backend_dev_get((size_t)baton_.deviceIndex);
            params.split_mode = LLAMA_SPLIT_MODE_NONE;
            params.main_gpu = 0;
        } else {
            params.n_gpu_layers = 0;
        }
        params.devices = devices;
        params.progress_callback = &LoadWorker::OnProgress;
        params.progress_callback_user_data = this;
        ModelPtr model(OpenAndLoad(api, params));
        if (!model) {
            if (owner_->abortLoad.load()) {
                aborted_ = true;
                SetError("The model load was aborted");
            } else {
                std::string log = LlamaLib::TakeLastLog();
                SetError("llama.cpp could not load " + baton_.path + (log.empty() ? "" : ": " + log));
            }
            return;
        }
        if (releasePages_) pages_.Release();
        loaded_ = std::move(model);  // handed to the NativeModel on the JS thread (OnOK)
    }

    // The file llama.cpp reads: the checked descriptor when there is one (the same open file, so a rename or a swap
    // of the path since the check changes nothing), else the path.
    llama_model* OpenAndLoad(const LlamaApi& api, const llama_model_params& params) {
#if !defined(_WIN32)
        if (baton_.fd >= 0) {
            if (api.llama_model_load_from_file_ptr != nullptr) {
                FILE* file = ::fdopen(baton_.fd, "rb");
                if (file == nullptr) throw std::runtime_error("cannot read the model's file descriptor: " + std::string(std::strerror(errno)));
                baton_.fd = -1;  // the FILE owns it now
                llama_model* model = nullptr;
                if (::fseeko(file, 0, SEEK_SET) == 0) model = api.llama_model_load_from_file_ptr(file, params);
                std::fclose(file);
                return model;
            }
#if defined(__APPLE__)
            const std::string self = "/dev/fd/" + std::to_string(baton_.fd);
#else
            const std::string self = "/proc/self/fd/" + std::to_string(baton_.fd);
#endif
            return api.llama_model_load_from_file(self.c_str(), params);  // reopens the same file, not the path
        }
#endif
        return api.llama_model_load_from_file(baton_.path.c_str(), params);
    }

    void CloseFd() noexcept {
#if !defined(_WIN32)
        if (baton_.fd >= 0) ::close(baton_.fd);
#endif
        baton_.fd = -1;
    }

    // Called by llama.cpp on this worker thread: must not throw (it is a C frame).
    static bool OnProgress(float progress, void* data) noexcept {
        auto* self = static_cast<LoadWorker*>(data);
        if (self->owner_->abortLoad.load()) return false;
        if (self->releasePages_ && progress - self->lastRelease_ >= 0.04f) {
            // llama.cpp reads the tensors about in file order, and calls this before each one: give back the pages
            // behind it (less a margin for tensors read out of order), not those it is about to read.
            self->lastRelease_ = progress;
            const double behind = progress * (double)self->pages_.FileSize() - 64.0 * 1024 * 1024;
            if (behind > 0) self->pages_.Release((uint64_t)behind);
        }
        if (self->hasProgress_ && (progress - self->lastProgress_ >= 0.01f || progress >= 1.0f)) {
            self->lastProgress_ = progress;
            try {
                std::shared_ptr<LoadState> state = self->state_;
                NativeModel* owner = self->owner_;
                auto* value = new float(progress);
                napi_status status = self->progress_.NonBlockingCall(
                    value, [state, owner](Napi::Env env, Napi::Function fn, float* p) {
                        const double v = *p;
                        delete p;
                        if (env == nullptr || fn.IsEmpty() || state->callbackThrew) return;
                        try {
                            fn.Call({Napi::Number::New(env, v)});
                        } catch (const Napi::Error& e) {  // the callback threw: stop the load, reject it with that
                            state->callbackThrew = true;
                            owner->abortLoad = true;
                            state->callbackMessage = DescribeThrown(env, e.Value());
                            NoThrow([&] {
                                Napi::Object holder = Napi::Object::New(env);
                                holder.Set("value", static_cast<Napi::Value>(e.Value()));
                                state->callbackError = Napi::Persistent(holder);
                            });
                        } catch (...) {
                            state->callbackThrew = true;
                            owner->abortLoad = true;
                            state->callbackMessage = "unknown error";
                        }
                    });
                if (status != napi_ok) delete value;
            } catch (...) {
            }
        }
        return true;
    }

    std::shared_ptr<LoadState> state_;
    NativeModel* owner_;
    LoadBaton baton_;
    ModelPtr loaded_;
    Napi::ThreadSafeFunction progress_;
    bool hasProgress_ = false;
    float lastProgress_ = -1.0f;
    FilePages pages_;
    bool releasePages_ = false;
    float lastRelease_ = -1.0f;
    bool aborted_ = false;
};

// Drops one owner of a loaded model on a libuv worker thread (freeing gigabytes takes a while).
class FreeWorker : public Napi::AsyncWorker {
public:
    FreeWorker(Napi::Env env, SharedModel model)
        : Napi::AsyncWorker(env, "phiAgent.freeModel"), deferred_(Napi::Promise::Deferred::New(env)), model_(std::move(model)) {}
    ~FreeWorker() override {
        try {
            model_.reset();  // Execute never ran (teardown): free it here
        } catch (...) {
        }
    }
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
        try {
            model_.reset();
        } catch (...) {
        }
    }
    void OnOK() override {
        NoThrow([&] { deferred_.Resolve(Env().Undefined()); });
    }

private:
    Napi::Promise::Deferred deferred_;
    SharedModel model_;
};

// A metadata value as a string; nullopt when the key is absent.
std::optional<std::string> MetaValue(const LlamaApi& api, const llama_model* model, const char* key) {
    std::vector<char> buffer(256);
    int32_t n = api.llama_model_meta_val_str(model, key, buffer.data(), buffer.size());
    if (n < 0) return std::nullopt;
    if ((size_t)n >= buffer.size()) {
        buffer.resize((size_t)n + 1);
        n = api.llama_model_meta_val_str(model, key, buffer.data(), buffer.size());
        if (n < 0) return std::nullopt;
    }
    return std::string(buffer.data(), (size_t)n);
}

std::string MetaString(const LlamaApi& api, const llama_model* model, const char* key) {
    return MetaValue(api, model, key).value_or("");
}

}  // namespace

Napi::Promise FreeOffThread(Napi::Env env, SharedModel model) {
    auto* worker = new FreeWorker(env, std::move(model));
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
}

Napi::Object NativeModel::Init(Napi::Env env, Napi::Object exports) {
    Napi::Function ctor = DefineClass(env, "NativeModel",
                                      {
                                          InstanceMethod("load", &NativeModel::Load),
                                          InstanceMethod("abortLoad", &NativeModel::AbortLoad),
                                          InstanceMethod("info", &NativeModel::Info),
                                          InstanceMethod("meta", &NativeModel::Meta),
                                          InstanceMethod("tokenize", &NativeModel::Tokenize),
                                          InstanceMethod("detokenize", &NativeModel::Detokenize),
                                          InstanceMethod("dispose", &NativeModel::Dispose),
                                      });
    exports.Set("NativeModel", ctor);
    return exports;
}

NativeModel::NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}

NativeModel::~NativeModel() {
    // The JS object was collected (or the environment is going away) without dispose(): drop this owner. Engines
    // keep their own, so the weights live on until the last of them closes.
    try {
        model_.reset();
    } catch (...) {
    }
}

void NativeModel::SetLoaded(ModelPtr model) { model_ = std::make_shared<LoadedModel>(std::move(model)); }

bool NativeModel::CheckLoaded(Napi::Env env) {
    if (model_) return true;
    MakeError(env, "ERR_DISPOSED", "the model is not loaded (or was disposed)").ThrowAsJavaScriptException();
    return false;
}

Napi::Value NativeModel::Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!LlamaLib::IsLoaded()) {
        MakeError(env, "ERR_LIBRARY_NOT_FOUND", "llama.cpp libraries are not loaded").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject()) {
        Napi::TypeError::New(env, "load(path: string, options: object, onProgress?: function)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (model_ || loading) {
        MakeError(env, "ERR_INVALID_STATE", "this NativeModel is already loaded").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    LoadBaton baton;
    baton.path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object options = info[1].As<Napi::Object>();
    if (options.Has("fd") && options.Get("fd").IsNumber()) {
        const int32_t fd = options.Get("fd").As<Napi::Number>().Int32Value();
#if !defined(_WIN32)
        // Our own descriptor of the same open file: the load keeps reading it even if JS closes its handle.
        baton.fd = fd >= 0 ? ::dup(fd) : -1;
        if (fd < 0 || baton.fd < 0) {
            MakeError(env, "ERR_LOAD_FAILED", "cannot use the model's file descriptor " + std::to_string(fd) + ": " +
                                                  std::strerror(fd < 0 ? EBADF : errno))
                .ThrowAsJavaScriptException();
            return env.Undefined();
        }
#else
        (void)fd;  // Windows: the path is loaded; src/model/PhiModel.ts checks the file's identity after the load
#endif
    }
    if (options.Has("gpuLayers") && options.Get("gpuLayers").IsNumber())
        baton.gpuLayers = options.Get("gpuLayers").As<Napi::Number>().Int32Value();
    if (options.Has("deviceIndex") && options.Get("deviceIndex").IsNumber())
        baton.deviceIndex = options.Get("deviceIndex").As<Napi::Number>().Int32Value();
    if (options.Has("mmap") && options.Get("mmap").IsBoolean())
        baton.useMmap = options.Get("mmap").As<Napi::Boolean>().Value();
    if (options.Has("repack") && options.Get("repack").IsBoolean())
        baton.repack = options.Get("repack").As<Napi::Boolean>().Value();
    Napi::Function onProgress;
    if (info.Length() > 2 && info[2].IsFunction()) onProgress = info[2].As<Napi::Function>();

    abortLoad = false;
    loading = true;
    auto* worker = new LoadWorker(env, this, info.This().As<Napi::Object>(), std::move(baton), onProgress);
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
}

Napi::Value NativeModel::AbortLoad(const Napi::CallbackInfo& info) {
    abortLoad = true;
    return info.Env().Undefined();
}

Napi::Value NativeModel::Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckLoaded(env)) return env.Undefined();
    const LlamaApi& api = LlamaLib::Api();
    const llama_model* model = model_->Get();
    Napi::Object out = Napi::Object::New(env);
    char desc[256] = {0};
    api.llama_model_desc(model, desc, sizeof desc);
    out.Set("description", Napi::String::New(env, desc));
    out.Set("architecture", Napi::String::New(env, MetaString(api, model, "general.architecture")));
    out.Set("name", Napi::String::New(env, MetaString(api, model, "general.name")));
    out.Set("contextLength", Napi::Number::New(env, api.llama_model_n_ctx_train(model)));
    out.Set("embeddingLength", Napi::Number::New(env, api.llama_model_n_embd(model)));
    out.Set("layers", Napi::Number::New(env, api.llama_model_n_layer(model)));
    out.Set("heads", Napi::Number::New(env, api.llama_model_n_head(model)));
    out.Set("vocabSize", Napi::Number::New(env, model_->NVocab()));
    out.Set("fileTypeId", Napi::Number::New(env, (double)api.llama_model_ftype(model)));
    out.Set("fileType", Napi::String::New(env, api.llama_ftype_name(api.llama_model_ftype(model))));
    out.Set("tensorBytes", Napi::Number::New(env, (double)api.llama_model_size(model)));
    out.Set("parameterCount", Napi::Number::New(env, (double)api.llama_model_n_params(model)));
    out.Set("eosToken", Napi::Number::New(env, api.llama_vocab_eos(model_->Vocab())));
    return out;
}

Napi::Value NativeModel::Meta(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckLoaded(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsString()) {
        Napi::TypeError::New(env, "meta(key: string)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const std::string key = info[0].As<Napi::String>().Utf8Value();
    const std::optional<std::string> value = MetaValue(LlamaLib::Api(), model_->Get(), key.c_str());
    return value ? Napi::String::New(env, *value) : env.Undefined();
}

Napi::Value NativeModel::Tokenize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckLoaded(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsString()) {
        Napi::TypeError::New(env, "tokenize(text: string, special: boolean)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const std::string text = info[0].As<Napi::String>().Utf8Value();
    const bool special = info.Length() > 1 && info[1].ToBoolean().Value();
    if (text.size() > (size_t)INT32_MAX / 2) {
        Napi::RangeError::New(env, "text is too long to tokenize").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const LlamaApi& api = LlamaLib::Api();
    const llama_vocab* vocab = model_->Vocab();
    // A byte-level BPE never yields more tokens than bytes (+1 for safety).
    std::vector<llama_token> tokens(text.size() + 1);
    int32_t n = api.llama_tokenize(vocab, text.data(), (int32_t)text.size(), tokens.data(), (int32_t)tokens.size(),
                                   /*add_special*/ false, special);
    if (n < 0 && n != INT32_MIN) {
        tokens.resize((size_t)-n);
        n = api.llama_tokenize(vocab, text.data(), (int32_t)text.size(), tokens.data(), (int32_t)tokens.size(), false,
                               special);
    }
    if (n < 0) {
        MakeError(env, "ERR_INVALID_ARGUMENT", "llama.cpp failed to tokenize the text").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Int32Array out = Napi::Int32Array::New(env, (size_t)n);
    std::copy(tokens.begin(), tokens.begin() + n, out.Data());
    return out;
}

Napi::Value NativeModel::Detokenize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckLoaded(env)) return env.Undefined();
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
        Napi::TypeError::New(env, "detokenize(tokens: Int32Array, special: boolean)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    Napi::Int32Array tokens = info[0].As<Napi::Int32Array>();
    const bool special = info.Length() > 1 && info[1].ToBoolean().Value();
    const llama_vocab* vocab = model_->Vocab();
    const int32_t nVocab = model_->NVocab();
    for (size_t i = 0; i < tokens.ElementLength(); i++) {  // cheap guard; TS validates with a precise message
        if (tokens[i] < 0 || tokens[i] >= nVocab) {
            Napi::RangeError::New(env, "token id out of range").ThrowAsJavaScriptException();
            return env.Undefined();
        }
    }
    // The concatenation of each token's piece: exactly the bytes generation produces. (llama_detokenize would
    // also "clean up" BPE spaces, e.g. " ." -> ".", which is not lossless.)
    const LlamaApi& api = LlamaLib::Api();
    std::string text;
    char buffer[256];
    for (size_t i = 0; i < tokens.ElementLength(); i++) {
        int32_t n = api.llama_token_to_piece(vocab, tokens[i], buffer, sizeof buffer, 0, special);
        if (n >= 0) {
            text.append(buffer, (size_t)n);
            continue;
        }
        std::string piece((size_t)-n, '\0');
        n = api.llama_token_to_piece(vocab, tokens[i], piece.data(), (int32_t)piece.size(), 0, special);
        if (n > 0) text.append(piece.data(), (size_t)n);
    }
    return Napi::String::New(env, text);
}

// Drops this object's owner of the weights at once (later calls see ERR_DISPOSED) and frees them on a libuv worker
// thread, not on the JS thread; the promise resolves when they are freed. During a load: aborts it.
Napi::Value NativeModel::Dispose(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (model_ && model_->engines.load() > 0) {
        MakeError(env, "ERR_INVALID_STATE", "close the model's engines before disposing it").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (loading) abortLoad = true;
    SharedModel model = std::move(model_);
    model_.reset();
    if (!model) {
        auto deferred = Napi::Promise::Deferred::New(env);
        deferred.Resolve(env.Undefined());
        return deferred.Promise();
    }
    return FreeOffThread(env, std::move(model));
}
