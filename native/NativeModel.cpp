#include "NativeModel.h"

#include "FilePages.h"

#include <chrono>
#include <cmath>
#include <optional>
#include <vector>

namespace {

// Loads the weights on a libuv worker thread. Progress reaches JS through a thread-safe function;
// AbortLoad() flips an atomic that llama.cpp's progress callback reads, which makes the load return null.
class LoadWorker : public Napi::AsyncWorker {
public:
    LoadWorker(Napi::Env env, NativeModel* owner, Napi::Object ownerObject, LoadBaton baton, Napi::Function onProgress)
        : Napi::AsyncWorker(env, "phiAgent.loadModel"),
          deferred_(Napi::Promise::Deferred::New(env)),
          owner_(owner),
          baton_(std::move(baton)),
          pages_(baton_.path) {
        // Weights copied out of the mapping (repacked for the CPU, or offloaded to a GPU) leave their file pages
        // resident for nothing: give them back while loading, so that the peak RSS stays near one copy.
        releasePages_ = baton_.useMmap && (baton_.repack || baton_.gpuLayers != 0);
        ownerRef_ = Napi::Persistent(ownerObject);
        if (!onProgress.IsEmpty()) {
            progress_ = Napi::ThreadSafeFunction::New(env, onProgress, "phiAgent.loadProgress", 0, 1);
            hasProgress_ = true;
        }
    }

    ~LoadWorker() override {
        if (hasProgress_) progress_.Release();
    }

    Napi::Promise Promise() { return deferred_.Promise(); }

    void Execute() override {
        try {
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
            ModelPtr model(api.llama_model_load_from_file(baton_.path.c_str(), params));
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
            owner_->SetLoaded(std::move(model));
        } catch (const std::exception& e) {
            SetError(std::string("model load failed: ") + e.what());
        } catch (...) {
            SetError("model load failed with an unknown native exception");
        }
    }

    void OnOK() override {
        owner_->loading = false;
        deferred_.Resolve(Env().Undefined());
    }

    void OnError(const Napi::Error& error) override {
        owner_->loading = false;
        deferred_.Reject(MakeError(Env(), aborted_ ? "ERR_ABORTED" : "ERR_LOAD_FAILED", error.Message()).Value());
    }

private:
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
            auto* value = new float(progress);
            napi_status status = self->progress_.NonBlockingCall(value, [](Napi::Env env, Napi::Function fn, float* p) {
                const double v = *p;
                delete p;
                if (env != nullptr && !fn.IsEmpty()) fn.Call({Napi::Number::New(env, v)});
            });
            if (status != napi_ok) delete value;
        }
        return true;
    }

    Napi::Promise::Deferred deferred_;
    NativeModel* owner_;
    Napi::ObjectReference ownerRef_;  // keeps the JS object (and so owner_) alive while loading
    LoadBaton baton_;
    Napi::ThreadSafeFunction progress_;
    bool hasProgress_ = false;
    float lastProgress_ = -1.0f;
    FilePages pages_;
    bool releasePages_ = false;
    float lastRelease_ = -1.0f;
    bool aborted_ = false;
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
    // Safety net: the JS object was collected without dispose(). Engines hold a reference to this object,
    // so none is alive here.
    model_.reset();
}

void NativeModel::SetLoaded(ModelPtr model) {
    const LlamaApi& api = LlamaLib::Api();
    vocab_ = api.llama_model_get_vocab(model.get());
    nVocab_ = api.llama_vocab_n_tokens(vocab_);
    model_ = std::move(model);
}

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
        MakeError(env, "ERR_INVALID_ARGUMENT", "this NativeModel is already loaded").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    LoadBaton baton;
    baton.path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object options = info[1].As<Napi::Object>();
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
    const llama_model* model = model_.get();
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
    out.Set("vocabSize", Napi::Number::New(env, nVocab_));
    out.Set("fileTypeId", Napi::Number::New(env, (double)api.llama_model_ftype(model)));
    out.Set("fileType", Napi::String::New(env, api.llama_ftype_name(api.llama_model_ftype(model))));
    out.Set("tensorBytes", Napi::Number::New(env, (double)api.llama_model_size(model)));
    out.Set("parameterCount", Napi::Number::New(env, (double)api.llama_model_n_params(model)));
    out.Set("eosToken", Napi::Number::New(env, api.llama_vocab_eos(vocab_)));
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
    const std::optional<std::string> value = MetaValue(LlamaLib::Api(), model_.get(), key.c_str());
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
    // A byte-level BPE never yields more tokens than bytes (+1 for safety).
    std::vector<llama_token> tokens(text.size() + 1);
    int32_t n = api.llama_tokenize(vocab_, text.data(), (int32_t)text.size(), tokens.data(), (int32_t)tokens.size(),
                                   /*add_special*/ false, special);
    if (n < 0 && n != INT32_MIN) {
        tokens.resize((size_t)-n);
        n = api.llama_tokenize(vocab_, text.data(), (int32_t)text.size(), tokens.data(), (int32_t)tokens.size(), false,
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
    for (size_t i = 0; i < tokens.ElementLength(); i++) {  // cheap guard; TS validates with a precise message
        if (tokens[i] < 0 || tokens[i] >= nVocab_) {
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
        int32_t n = api.llama_token_to_piece(vocab_, tokens[i], buffer, sizeof buffer, 0, special);
        if (n >= 0) {
            text.append(buffer, (size_t)n);
            continue;
        }
        std::string piece((size_t)-n, '\0');
        n = api.llama_token_to_piece(vocab_, tokens[i], piece.data(), (int32_t)piece.size(), 0, special);
        if (n > 0) text.append(piece.data(), (size_t)n);
    }
    return Napi::String::New(env, text);
}

Napi::Value NativeModel::Dispose(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (engines_ > 0) {
        MakeError(env, "ERR_INVALID_ARGUMENT", "close the model's engines before disposing it").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (loading) {
        abortLoad = true;
        return env.Undefined();
    }
    if (model_) Napi::MemoryManagement::AdjustExternalMemory(env, 0);
    model_.reset();
    vocab_ = nullptr;
    return env.Undefined();
}
