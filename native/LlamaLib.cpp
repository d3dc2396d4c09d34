#include "LlamaLib.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#ifdef _WIN32
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace fs = std::filesystem;

std::mutex LlamaLib::mutex_;
std::atomic<bool> LlamaLib::loaded_{false};
std::string LlamaLib::dir_;
LlamaApi LlamaLib::api_;
std::vector<void*> LlamaLib::handles_;

namespace {

thread_local std::string lastLog;
int printLevel = -1;  // ggml_log_level at or above which logs go to stderr; -1 = never

// llama.cpp calls this from whatever thread logs. It must not throw: it is called from C frames.
void LogCallback(enum ggml_log_level level, const char* text, void*) noexcept {
    if (text == nullptr) return;
    try {
        if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR ||
            (level == GGML_LOG_LEVEL_CONT && !lastLog.empty())) {
            lastLog += text;
            if (lastLog.size() > 2048) lastLog.erase(0, lastLog.size() - 2048);
        }
    } catch (...) {
    }
    if (printLevel >= 0 && (int)level >= printLevel) fputs(text, stderr);
}

void* OpenLibrary(const fs::path& path, std::string& error) {
#ifdef _WIN32
    HMODULE handle = LoadLibraryExW(path.wstring().c_str(), nullptr,
                                    LOAD_LIBRARY_SEARCH_DLL_LOAD_DIR | LOAD_LIBRARY_SEARCH_DEFAULT_DIRS);
    if (handle == nullptr) error = "LoadLibraryEx failed with error " + std::to_string(GetLastError());
    return reinterpret_cast<void*>(handle);
#else
    void* handle = dlopen(path.string().c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        const char* message = dlerror();
        error = message ? message : "dlopen failed";
    }
    return handle;
#endif
}

void* FindSymbol(void* handle, const char* name) {
#ifdef _WIN32
    return reinterpret_cast<void*>(GetProcAddress(reinterpret_cast<HMODULE>(handle), name));
#else
    return dlsym(handle, name);
#endif
}

bool IsSharedLibrary(const std::string& name) {
#ifdef _WIN32
    return name.size() > 4 && name.compare(name.size() - 4, 4, ".dll") == 0;
#elif defined(__APPLE__)
    return name.size() > 6 && name.compare(name.size() - 6, 6, ".dylib") == 0;
#else
    return name.find(".so") != std::string::npos;
#endif
}

// libllama.so, libllama.v0.5.0.so, libllama.cuda.v0.5.0.so, llama.dll, libllama.dylib — not libllama-common.
// libggml.so, libggml.v0.5.0.so, ggml.dll — not libggml-base / libggml-cpu-* / libggml-cuda.
fs::path FindLibrary(const fs::path& dir, const std::string& stem) {
    std::vector<fs::path> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (!IsSharedLibrary(name)) continue;
        for (const std::string& prefix : {std::string("lib") + stem, stem}) {
            if (name.compare(0, prefix.size(), prefix) != 0) continue;
            const char next = name.size() > prefix.size() ? name[prefix.size()] : '\0';
            if (next == '.') found.push_back(entry.path());
        }
    }
    if (found.empty()) return {};
    // Prefer the shortest name (libllama.so over libllama.so.0.0.1 symlink chains).
    std::sort(found.begin(), found.end(),
              [](const fs::path& a, const fs::path& b) { return a.string().size() < b.string().size(); });
    return found.front();
}

}  // namespace

const LlamaApi& LlamaLib::Load(const std::string& dirString) {
    std::lock_guard<std::mutex> lock(mutex_);
    std::error_code ec;
    const fs::path dir = fs::weakly_canonical(fs::path(dirString), ec);
    if (loaded_) {
        if (dir.string() != dir_) {
            throw std::runtime_error("llama.cpp libraries are already loaded from " + dir_ +
                                     " in this process; cannot also load " + dir.string() +
                                     " (one library set per process: choose the device before the first load)");
        }
        return api_;
    }
    if (!fs::is_directory(dir, ec)) throw std::runtime_error("llama.cpp library folder not found: " + dirString);

    const fs::path llamaPath = FindLibrary(dir, "llama");
    const fs::path ggmlPath = FindLibrary(dir, "ggml");
    if (llamaPath.empty() || ggmlPath.empty()) {
        throw std::runtime_error("no " + std::string(llamaPath.empty() ? "libllama" : "libggml") +
                                 " shared library in " + dir.string());
    }

    std::string error;
    void* ggml = OpenLibrary(ggmlPath, error);
    if (ggml == nullptr) throw std::runtime_error("cannot open " + ggmlPath.string() + ": " + error);
    void* llama = OpenLibrary(llamaPath, error);
    if (llama == nullptr) throw std::runtime_error("cannot open " + llamaPath.string() + ": " + error);

    LlamaApi api;
    std::string missing;
#define PHI_RESOLVE(name)                                                                           \
    {                                                                                               \
        void* symbol = FindSymbol(std::strncmp(#name, "ggml_", 5) == 0 ? ggml : llama, #name);      \
        if (symbol == nullptr) symbol = FindSymbol(std::strncmp(#name, "ggml_", 5) == 0 ? llama : ggml, #name); \
        if (symbol == nullptr) missing += std::string(missing.empty() ? "" : ", ") + #name;         \
        api.name = reinterpret_cast<decltype(api.name)>(symbol);                                    \
    }
    PHI_LLAMA_FUNCTIONS(PHI_RESOLVE)
#undef PHI_RESOLVE
    api.llama_model_load_from_file_ptr =
        reinterpret_cast<decltype(api.llama_model_load_from_file_ptr)>(FindSymbol(llama, "llama_model_load_from_file_ptr"));
    if (!missing.empty()) {
        throw std::runtime_error(llamaPath.string() + " is not the llama.cpp release this addon was built for: missing " +
                                 missing);
    }

    if (const char* level = std::getenv("PHI_AGENT_LLAMA_LOG")) {
        const std::string value(level);
        printLevel = value == "debug" ? GGML_LOG_LEVEL_DEBUG
                     : value == "info" ? GGML_LOG_LEVEL_INFO
                     : value == "warn" ? GGML_LOG_LEVEL_WARN
                     : value == "error" ? GGML_LOG_LEVEL_ERROR
                                        : -1;
    }
    api.llama_log_set(LogCallback, nullptr);
    api.ggml_backend_load_all_from_path(dir.string().c_str());
    api.llama_backend_init();
    if (ggml_backend_dev_t cpu = api.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)) {
        ggml_backend_reg_t reg = api.ggml_backend_dev_backend_reg(cpu);
        api.cpu_threadpool_new = reinterpret_cast<decltype(api.cpu_threadpool_new)>(
            api.ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new"));
        api.cpu_threadpool_free = reinterpret_cast<decltype(api.cpu_threadpool_free)>(
            api.ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free"));
        if (api.cpu_threadpool_new == nullptr || api.cpu_threadpool_free == nullptr) {
            api.cpu_threadpool_new = nullptr;
            api.cpu_threadpool_free = nullptr;
        }
    }

    handles_ = {ggml, llama};
    api_ = api;
    dir_ = dir.string();
    loaded_ = true;
    return api_;
}

const LlamaApi& LlamaLib::Api() {
    if (!loaded_) throw std::runtime_error("llama.cpp libraries are not loaded yet");
    return api_;
}

bool LlamaLib::IsLoaded() { return loaded_; }

std::string LlamaLib::Dir() {
    std::lock_guard<std::mutex> lock(mutex_);
    return dir_;
}

std::string LlamaLib::TakeLastLog() {
    std::string out;
    out.swap(lastLog);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

void LlamaLib::ClearLastLog() { lastLog.clear(); }
