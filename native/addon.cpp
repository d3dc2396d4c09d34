// Entry point of the phi_agent addon: registers NativeModel and NativeEngine, plus the library-level functions
// (loadLibrary, listDevices, quantize). Everything here is thin: policy (which device, which options, which
// errors) lives in TypeScript under src/.
#include <napi.h>

#include <thread>

#include "Common.h"
#include "NativeEngine.h"
#include "NativeModel.h"
#include "TextStream.h"

namespace {

// loadLibrary(dir: string) => { dir, systemInfo, supportsGpuOffload }
Napi::Value LoadLibrary(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) {
        Napi::TypeError::New(env, "loadLibrary(dir: string)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    try {
        const LlamaApi& api = LlamaLib::Load(info[0].As<Napi::String>().Utf8Value());
        Napi::Object out = Napi::Object::New(env);
        out.Set("dir", Napi::String::New(env, LlamaLib::Dir()));
        out.Set("systemInfo", Napi::String::New(env, api.llama_print_system_info()));
        out.Set("supportsGpuOffload", Napi::Boolean::New(env, api.llama_supports_gpu_offload()));
        out.Set("maxSequences", Napi::Number::New(env, (double)api.llama_max_parallel_sequences()));
        return out;
    } catch (const std::exception& e) {
        MakeError(env, "ERR_LIBRARY_NOT_FOUND", e.what()).ThrowAsJavaScriptException();
        return env.Undefined();
    }
}

// listDevices() => [{ index, name, description, type, backend, memoryFree, memoryTotal }]
Napi::Value ListDevices(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!LlamaLib::IsLoaded()) {
        MakeError(env, "ERR_LIBRARY_NOT_FOUND", "llama.cpp libraries are not loaded").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const LlamaApi& api = LlamaLib::Api();
    const size_t count = api.ggml_backend_dev_count();
    Napi::Array out = Napi::Array::New(env, count);
    for (size_t i = 0; i < count; i++) {
        ggml_backend_dev_t dev = api.ggml_backend_dev_get(i);
        size_t free = 0, total = 0;
        api.ggml_backend_dev_memory(dev, &free, &total);
        const char* type = "other";
        switch (api.ggml_backend_dev_type(dev)) {
            case GGML_BACKEND_DEVICE_TYPE_CPU: type = "cpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_GPU: type = "gpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_IGPU: type = "igpu"; break;
            case GGML_BACKEND_DEVICE_TYPE_ACCEL: type = "accel"; break;
            default: break;
        }
        Napi::Object d = Napi::Object::New(env);
        d.Set("index", Napi::Number::New(env, (double)i));
        d.Set("name", Napi::String::New(env, api.ggml_backend_dev_name(dev)));
        d.Set("description", Napi::String::New(env, api.ggml_backend_dev_description(dev)));
        d.Set("type", Napi::String::New(env, type));
        d.Set("backend", Napi::String::New(env, api.ggml_backend_reg_name(api.ggml_backend_dev_backend_reg(dev))));
        d.Set("memoryFree", Napi::Number::New(env, (double)free));
        d.Set("memoryTotal", Napi::Number::New(env, (double)total));
        out.Set((uint32_t)i, d);
    }
    return out;
}

class QuantizeWorker : public Napi::AsyncWorker {
public:
    QuantizeWorker(Napi::Env env, std::string input, std::string output, int32_t ftype, int32_t threads)
        : Napi::AsyncWorker(env, "phiAgent.quantize"),
          deferred_(Napi::Promise::Deferred::New(env)),
          input_(std::move(input)),
          output_(std::move(output)),
          ftype_(ftype),
          threads_(threads) {}
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
        try {
            const LlamaApi& api = LlamaLib::Api();
            LlamaLib::ClearLastLog();
            llama_model_quantize_params params = api.llama_model_quantize_default_params();
            params.ftype = static_cast<llama_ftype>(ftype_);
            params.nthread = threads_;
            params.allow_requantize = true;
            if (api.llama_model_quantize(input_.c_str(), output_.c_str(), &params) != 0) {
                std::string log = LlamaLib::TakeLastLog();
                SetError("llama.cpp could not quantize " + input_ + (log.empty() ? "" : ": " + log));
            }
        } catch (const std::exception& e) {
            SetError(std::string("quantize failed: ") + e.what());
        } catch (...) {
            SetError("quantize failed with an unknown native exception");
        }
    }
    void OnOK() override {
        NoThrow([&] { deferred_.Resolve(Env().Undefined()); });
    }
    void OnError(const Napi::Error& error) override {
        NoThrow([&] { deferred_.Reject(MakeError(Env(), "ERR_QUANTIZE_FAILED", error.Message()).Value()); });
    }

private:
    Napi::Promise::Deferred deferred_;
    std::string input_, output_;
    int32_t ftype_, threads_;
};

// quantize(input: string, output: string, ftype: number, threads: number) => Promise<void>
Napi::Value Quantize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!LlamaLib::IsLoaded()) {
        MakeError(env, "ERR_LIBRARY_NOT_FOUND", "llama.cpp libraries are not loaded").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (info.Length() < 4 || !info[0].IsString() || !info[1].IsString() || !info[2].IsNumber() || !info[3].IsNumber()) {
        Napi::TypeError::New(env, "quantize(input, output, ftype, threads)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    auto* worker = new QuantizeWorker(env, info[0].As<Napi::String>(), info[1].As<Napi::String>(),
                                      info[2].As<Napi::Number>().Int32Value(), info[3].As<Napi::Number>().Int32Value());
    Napi::Promise promise = worker->Promise();
    worker->Queue();
    return promise;
}

// textStreamRun(pieces: Uint8Array[], stops: string[], ending: "eos"|"length"|"abort") => { chunks, text, stopped }
// For tests: drives TextStream exactly as NativeEngine does: ProcessToken calls Next(piece, end) for every token
// (end: its last allowed token, "length"), Finish() ends it on EOS / abort. Each chunk becomes a JS string the way
// CallJs makes one.
Napi::Value TextStreamRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsArray() || !info[1].IsArray() || !info[2].IsString()) {
        throw Napi::TypeError::New(env, "textStreamRun(pieces: Uint8Array[], stops: string[], ending: string)");
    }
    Napi::Array pieces = info[0].As<Napi::Array>();
    Napi::Array stopArray = info[1].As<Napi::Array>();
    const std::string ending = info[2].As<Napi::String>().Utf8Value();
    if (ending != "eos" && ending != "length" && ending != "abort") throw Napi::RangeError::New(env, "ending: eos | length | abort");
    std::vector<std::string> stops;
    for (uint32_t i = 0; i < stopArray.Length(); i++) {
        Napi::Value v = stopArray.Get(i);
        if (!v.IsString()) throw Napi::TypeError::New(env, "stops must be strings");
        stops.push_back(v.As<Napi::String>().Utf8Value());
    }
    TextStream stream(std::move(stops));
    Napi::Array chunks = Napi::Array::New(env);
    uint32_t consumed = 0;
    for (uint32_t i = 0; i < pieces.Length() && !stream.Finished(); i++) {
        Napi::Value v = pieces.Get(i);
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
            throw Napi::TypeError::New(env, "pieces must be Uint8Arrays");
        }
        Napi::Uint8Array bytes = v.As<Napi::Uint8Array>();
        const std::string piece(reinterpret_cast<const char*>(bytes.Data()), bytes.ElementLength());
        const bool end = ending == "length" && i + 1 == pieces.Length();
        const std::string chunk = stream.Next(piece, end);
        chunks.Set(chunks.Length(), Napi::String::New(env, chunk));
        consumed++;
    }
    const std::string rest = stream.Finish();
    if (!rest.empty()) chunks.Set(chunks.Length(), Napi::String::New(env, rest));
    Napi::Object out = Napi::Object::New(env);
    out.Set("chunks", chunks);
    out.Set("text", Napi::String::New(env, stream.Text()));
    out.Set("stopped", Napi::Boolean::New(env, stream.Stopped()));
    out.Set("consumed", Napi::Number::New(env, consumed));
    return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    exports.Set("loadLibrary", Napi::Function::New(env, LoadLibrary, "loadLibrary"));
    exports.Set("listDevices", Napi::Function::New(env, ListDevices, "listDevices"));
    exports.Set("quantize", Napi::Function::New(env, Quantize, "quantize"));
    exports.Set("textStreamRun", Napi::Function::New(env, TextStreamRun, "textStreamRun"));
    exports.Set("hardwareConcurrency", Napi::Number::New(env, (double)std::thread::hardware_concurrency()));
    NativeModel::Init(env, exports);
    NativeEngine::Init(env, exports);
    return exports;
}

}  // namespace

NODE_API_MODULE(phi_agent, Init)
