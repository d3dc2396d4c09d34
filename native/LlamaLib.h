// LlamaLib: the llama.cpp / ggml shared libraries, opened at run time from one folder.
//
// The addon is compiled against the headers of the exact llama.cpp release that node-llama-cpp's prebuilt
// libraries were built from, but it does not link to them: the CPU, CUDA, Vulkan and Metal builds ship under
// different sonames (libllama.v0.5.0.so, libllama.cuda.v0.5.0.so, ...), so we dlopen() the set the user picked
// and resolve every function we call into this table. No LD_LIBRARY_PATH needed; one addon binary serves them all.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"

// Every llama.cpp / ggml function the addon calls. X(name) declares a typed pointer `name` in LlamaApi.
#define PHI_LLAMA_FUNCTIONS(X)              \
    X(llama_backend_init)                   \
    X(llama_log_set)                        \
    X(llama_model_default_params)           \
    X(llama_context_default_params)         \
    X(llama_sampler_chain_default_params)   \
    X(llama_model_quantize_default_params)  \
    X(llama_model_load_from_file)           \
    X(llama_model_free)                     \
    X(llama_init_from_model)                \
    X(llama_free)                           \
    X(llama_time_us)                        \
    X(llama_max_parallel_sequences)         \
    X(llama_supports_gpu_offload)           \
    X(llama_model_get_vocab)                \
    X(llama_model_n_ctx_train)              \
    X(llama_model_n_embd)                   \
    X(llama_model_n_layer)                  \
    X(llama_model_n_head)                   \
    X(llama_model_meta_val_str)             \
    X(llama_model_desc)                     \
    X(llama_model_ftype)                    \
    X(llama_ftype_name)                     \
    X(llama_model_size)                     \
    X(llama_model_n_params)                 \
    X(llama_model_quantize)                 \
    X(llama_vocab_n_tokens)                 \
    X(llama_vocab_is_eog)                   \
    X(llama_vocab_eos)                      \
    X(llama_tokenize)                       \
    X(llama_token_to_piece)                 \
    X(llama_n_ctx)                          \
    X(llama_n_batch)                        \
    X(llama_get_memory)                     \
    X(llama_memory_seq_rm)                  \
    X(llama_memory_clear)                   \
    X(llama_memory_seq_cp)                  \
    X(llama_memory_seq_pos_min)             \
    X(llama_memory_seq_pos_max)             \
    X(llama_n_seq_max)                      \
    X(llama_model_is_recurrent)             \
    X(llama_model_is_hybrid)                \
    X(llama_model_n_swa)                    \
    X(llama_batch_init)                     \
    X(llama_batch_free)                     \
    X(llama_decode)                         \
    X(llama_set_abort_callback)             \
    X(llama_get_logits_ith)                 \
    X(llama_sampler_chain_init)             \
    X(llama_sampler_chain_add)              \
    X(llama_sampler_init_greedy)            \
    X(llama_sampler_init_dist)              \
    X(llama_sampler_init_top_k)             \
    X(llama_sampler_init_top_p)             \
    X(llama_sampler_init_min_p)             \
    X(llama_sampler_init_temp)              \
    X(llama_sampler_init_penalties)         \
    X(llama_sampler_init_grammar)           \
    X(llama_sampler_accept)                 \
    X(llama_sampler_apply)                  \
    X(llama_sampler_clone)                  \
    X(llama_sampler_sample)                 \
    X(llama_sampler_free)                   \
    X(llama_print_system_info)              \
    X(llama_attach_threadpool)              \
    X(ggml_threadpool_params_init)          \
    X(ggml_backend_reg_get_proc_address)    \
    X(ggml_backend_dev_by_type)             \
    X(ggml_backend_load_all_from_path)      \
    X(ggml_backend_dev_count)               \
    X(ggml_backend_dev_get)                 \
    X(ggml_backend_dev_name)                \
    X(ggml_backend_dev_description)         \
    X(ggml_backend_dev_memory)              \
    X(ggml_backend_dev_type)                \
    X(ggml_backend_dev_backend_reg)         \
    X(ggml_backend_reg_name)

struct LlamaApi {
#define PHI_DECLARE_POINTER(name) decltype(&::name) name = nullptr;
    PHI_LLAMA_FUNCTIONS(PHI_DECLARE_POINTER)
#undef PHI_DECLARE_POINTER
    // Exported by the CPU backend (one of the libggml-cpu-* variants, picked at run time), found through its
    // registry after the backends load; null when that backend has none (then contexts use per-graph threads).
    decltype(&::ggml_threadpool_new) cpu_threadpool_new = nullptr;
    decltype(&::ggml_threadpool_free) cpu_threadpool_free = nullptr;
    // Optional (older releases lack it): loads from an open FILE, which lets a load read the very file that
    // src/gguf/validate.ts checked. Null: NativeModel falls back to /proc/self/fd/N (/dev/fd/N on macOS).
    decltype(&::llama_model_load_from_file_ptr) llama_model_load_from_file_ptr = nullptr;
};

// The one loaded library set of this process. llama.cpp keeps global state (backend registry, logging), so a
// process uses one set: the first successful Load() wins and later calls must name the same folder.
class LlamaLib {
public:
    // Opens libllama*/libggml* in `dir` and registers its backends. Throws std::runtime_error with a message
    // that names the folder and what was missing. Thread-safe; idempotent for the same folder.
    static const LlamaApi& Load(const std::string& dir);
    // The loaded API; throws std::runtime_error if Load() has not succeeded.
    static const LlamaApi& Api();
    static bool IsLoaded();
    static std::string Dir();
    // The last few warning/error lines llama.cpp logged on this thread's current operation (for error messages).
    static std::string TakeLastLog();
    static void ClearLastLog();

private:
    static std::mutex mutex_;
    static std::atomic<bool> loaded_;
    static std::string dir_;
    static LlamaApi api_;
    static std::vector<void*> handles_;
};
