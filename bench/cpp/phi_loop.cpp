// phi_loop: the plain C++ baseline of `npm run bench`.
//
// A minimal generation loop straight over llama.cpp's C API, linked against the SAME prebuilt shared libraries
// that llm-phi-agent runs on (node_modules/@node-llama-cpp/<platform>/bins/<platform>), so that the bench can
// tell how much our N-API layer and TypeScript API cost on top of raw llama.cpp.
//
// What it does, like a real app would:
//   - ggml_backend_load_all_from_path(lib dir) so the best CPU variant (and a GPU backend, if present) loads;
//   - loads the model (mmap, default params), creates one context (n_ctx, n_batch = n_ubatch, n_seq_max = S,
//     kv_unified, n_threads = n_threads_batch);
//   - per repeat: clears the KV cache, decodes the prompt of every sequence in n_batch chunks with logits only on
//     the last token of each sequence, then samples with a greedy sampler chain per sequence and decodes all S
//     sequences together, one token each per step, for --gen-tokens tokens.
// EOS does not stop it (the bench needs a fixed number of tokens); the first EOG position is reported instead.
//
// Timings come from llama_time_us():
//   load_ms          model load (llama_model_load_from_file) + context creation, first load in this process
//   load_warm_ms     the same, second load (only with --reload)
//   prompt_ms        time to decode all prompt tokens (all sequences) up to logits available
//   ttft_ms          prompt_ms + sampling of the first token of every sequence
//   decode_tok_s     tokens after the first / time from the first to the last sampled token, per sequence
//   aggregate_tok_s  the same summed over the S sequences (S * (M - 1) / time)
// Output: one JSON line on stdout (progress and llama.cpp logs, if --verbose, on stderr).
//
// Build (the bench does this): g++ -O2 -std=c++17 phi_loop.cpp -I<llama>/include -I<llama>/ggml/include
//   <libdir>/libllama.so <libdir>/libggml.so <libdir>/libggml-base.so -Wl,-rpath,<libdir> -ldl -o phi_loop

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"
#include "llama.h"

#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Args {
    std::string model;
    std::string lib_dir;
    std::string prompt_ids_file;   // one line per sequence: space-separated token ids (cycled over sequences)
    std::string prompt_text_file;  // text to tokenize (repeated until --prompt-tokens)
    int threads = 2;
    int prompt_tokens = 128;
    int gen_tokens = 64;
    int sequences = 1;
    int ctx = 0;  // 0 = derived: S * (prompt + gen), rounded up to 256
    int batch = 512;
    int repeat = 3;
    int gpu_layers = 0;  // -1 = all
    int flash_attn = -1; // -1 auto, 0 off, 1 on
    bool distinct = true; // different prompt per sequence when generated from text
    bool reload = false;  // load the model a second time and report load_warm_ms
    bool threadpool = false; // attach a persistent ggml threadpool (like llama-cli) instead of per-graph threads
    bool warmup = true;
    bool repack = true;   // llama.cpp's default: let the CPU backend repack weights (extra buffer types)
    bool mmap = true;
    bool verbose = false;
    bool print_tokens = false;
};

[[noreturn]] void die(const std::string & msg) {
    std::fprintf(stderr, "phi_loop: %s\n", msg.c_str());
    std::exit(2);
}

int to_int(const char * flag, const char * v) {
    char * end = nullptr;
    long x = std::strtol(v, &end, 10);
    if (!end || *end != '\0') die(std::string(flag) + " expects an integer, got \"" + v + "\"");
    return (int) x;
}

void usage() {
    std::fprintf(stderr,
        "usage: phi_loop --model FILE [--threads N] [--prompt-tokens N] [--gen-tokens M] [--sequences S]\n"
        "                [--ctx N] [--batch 512] [--repeat R] [--lib-dir DIR] [--gpu-layers N|-1]\n"
        "                [--prompt-ids-file F | --prompt-text-file F] [--same-prompt] [--reload]\n"
        "                [--threadpool] [--flash-attn auto|on|off] [--no-repack] [--no-mmap] [--no-warmup]\n"
        "                [--print-tokens] [--verbose]\n");
}

Args parse(int argc, char ** argv) {
    Args a;
    for (int i = 1; i < argc; i++) {
        std::string k = argv[i];
        auto val = [&]() -> const char * {
            if (i + 1 >= argc) die(k + " needs a value");
            return argv[++i];
        };
        if (k == "--model") a.model = val();
        else if (k == "--lib-dir") a.lib_dir = val();
        else if (k == "--prompt-ids-file") a.prompt_ids_file = val();
        else if (k == "--prompt-text-file") a.prompt_text_file = val();
        else if (k == "--threads") a.threads = to_int("--threads", val());
        else if (k == "--prompt-tokens") a.prompt_tokens = to_int("--prompt-tokens", val());
        else if (k == "--gen-tokens") a.gen_tokens = to_int("--gen-tokens", val());
        else if (k == "--sequences") a.sequences = to_int("--sequences", val());
        else if (k == "--ctx") a.ctx = to_int("--ctx", val());
        else if (k == "--batch") a.batch = to_int("--batch", val());
        else if (k == "--repeat") a.repeat = to_int("--repeat", val());
        else if (k == "--gpu-layers") a.gpu_layers = to_int("--gpu-layers", val());
        else if (k == "--flash-attn") {
            std::string v = val();
            a.flash_attn = v == "on" ? 1 : v == "off" ? 0 : v == "auto" ? -1 : (die("--flash-attn: auto|on|off"), 0);
        }
        else if (k == "--same-prompt") a.distinct = false;
        else if (k == "--reload") a.reload = true;
        else if (k == "--threadpool") a.threadpool = true;
        else if (k == "--no-warmup") a.warmup = false;
        else if (k == "--no-repack") a.repack = false;
        else if (k == "--no-mmap") a.mmap = false;
        else if (k == "--print-tokens") a.print_tokens = true;
        else if (k == "--verbose") a.verbose = true;
        else if (k == "--help" || k == "-h") { usage(); std::exit(0); }
        else { usage(); die("unknown argument " + k); }
    }
    if (a.model.empty()) { usage(); die("--model is required"); }
    if (a.threads < 1) die("--threads must be >= 1");
    if (a.prompt_tokens < 1) die("--prompt-tokens must be >= 1");
    if (a.gen_tokens < 1) die("--gen-tokens must be >= 1");
    if (a.sequences < 1) die("--sequences must be >= 1");
    if (a.batch < 1) die("--batch must be >= 1");
    if (a.repeat < 1) die("--repeat must be >= 1");
    return a;
}

// Folder of the loaded libllama (the default place to look for ggml backends).
std::string libllama_dir() {
    Dl_info info{};
    if (dladdr((void *) &llama_backend_init, &info) && info.dli_fname) {
        std::string p = info.dli_fname;
        auto slash = p.find_last_of('/');
        if (slash != std::string::npos) return p.substr(0, slash);
    }
    return ".";
}

long peak_rss_kb() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("VmHWM:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
    }
    return -1;
}

double cpu_ms() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

const char * kDefaultText =
    "The benefits of multi-agent systems include the ability to divide a large problem into smaller parts, "
    "to let specialised agents work on each part in parallel, and to combine their answers into a result that "
    "no single agent could have produced alone. Agents exchange messages, keep their own state and decide "
    "for themselves when to act. In practice this means that a system can grow by adding agents rather than "
    "by rewriting the ones that already exist, and that a failure in one agent does not bring down the rest. ";

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool add_special) {
    int n = -llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), nullptr, 0, add_special, false);
    std::vector<llama_token> out(std::max(n, 0));
    if (n > 0) {
        int got = llama_tokenize(vocab, text.c_str(), (int32_t) text.size(), out.data(), n, add_special, false);
        if (got < 0) die("tokenize failed");
        out.resize(got);
    }
    return out;
}

std::vector<std::vector<llama_token>> make_prompts(const Args & a, const llama_vocab * vocab) {
    std::vector<std::vector<llama_token>> prompts;
    if (!a.prompt_ids_file.empty()) {
        std::ifstream f(a.prompt_ids_file);
        if (!f) die("cannot read --prompt-ids-file " + a.prompt_ids_file);
        std::string line;
        const int n_vocab = llama_vocab_n_tokens(vocab);
        while (std::getline(f, line)) {
            std::istringstream ss(line);
            std::vector<llama_token> ids;
            long t;
            while (ss >> t) {
                if (t < 0 || t >= n_vocab) die("token id out of range in --prompt-ids-file: " + std::to_string(t));
                ids.push_back((llama_token) t);
            }
            if (!ids.empty()) prompts.push_back(std::move(ids));
        }
        if (prompts.empty()) die("--prompt-ids-file holds no token ids");
        std::vector<std::vector<llama_token>> out;
        for (int s = 0; s < a.sequences; s++) out.push_back(prompts[s % prompts.size()]);
        return out;
    }
    std::string text = kDefaultText;
    if (!a.prompt_text_file.empty()) {
        std::ifstream f(a.prompt_text_file);
        if (!f) die("cannot read --prompt-text-file " + a.prompt_text_file);
        std::stringstream ss;
        ss << f.rdbuf();
        text = ss.str();
        if (text.empty()) die("--prompt-text-file is empty");
    }
    std::vector<llama_token> base = tokenize(vocab, text, false);
    if (base.empty()) die("prompt text tokenizes to nothing");
    const bool add_bos = llama_vocab_get_add_bos(vocab);
    for (int s = 0; s < a.sequences; s++) {
        std::vector<llama_token> p;
        if (add_bos) p.push_back(llama_vocab_bos(vocab));
        size_t off = a.distinct ? (size_t) s * 7 : 0;  // different start per sequence
        while ((int) p.size() < a.prompt_tokens) p.push_back(base[off++ % base.size()]);
        prompts.push_back(std::move(p));
    }
    return prompts;
}

void batch_add(llama_batch & b, llama_token t, llama_pos pos, llama_seq_id seq, bool logits) {
    b.token[b.n_tokens] = t;
    b.pos[b.n_tokens] = pos;
    b.n_seq_id[b.n_tokens] = 1;
    b.seq_id[b.n_tokens][0] = seq;
    b.logits[b.n_tokens] = logits ? 1 : 0;
    b.n_tokens++;
}

double median(std::vector<double> v) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string json_num(double x) {
    if (!std::isfinite(x)) return "null";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4f", x);
    return buf;
}

std::string json_arr(const std::vector<double> & v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); i++) s += (i ? "," : "") + json_num(v[i]);
    return s + "]";
}

std::string json_str(const std::string & in) {
    std::string s = "\"";
    for (char c : in) {
        if (c == '"' || c == '\\') { s += '\\'; s += c; }
        else if ((unsigned char) c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); s += b; }
        else s += c;
    }
    return s + "\"";
}

bool g_verbose = false;
void log_cb(enum ggml_log_level level, const char * text, void *) {
    if (g_verbose || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

struct Loaded {
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    ggml_threadpool_t tp = nullptr;
    double load_ms = 0;
};

decltype(ggml_threadpool_free) * g_tp_free = nullptr;

Loaded load(const Args & a, int n_ctx) {
    Loaded L;
    const int64_t t0 = llama_time_us();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = a.gpu_layers;
    mp.use_extra_bufts = a.repack;
    if (!a.mmap) mp.load_mode = LLAMA_LOAD_MODE_NONE;
    L.model = llama_model_load_from_file(a.model.c_str(), mp);
    if (!L.model) die("could not load model " + a.model);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx;
    cp.n_batch = (uint32_t) a.batch;
    cp.n_ubatch = (uint32_t) a.batch;
    cp.n_seq_max = (uint32_t) a.sequences;
    cp.n_threads = a.threads;
    cp.n_threads_batch = a.threads;
    cp.kv_unified = true;
    cp.no_perf = true;
    if (a.flash_attn >= 0) cp.flash_attn_type = a.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    L.ctx = llama_init_from_model(L.model, cp);
    if (!L.ctx) die("could not create a context (n_ctx " + std::to_string(n_ctx) + ")");
    if (a.threadpool) {
        ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        ggml_backend_reg_t reg = cpu ? ggml_backend_dev_backend_reg(cpu) : nullptr;
        auto * tp_new = reg ? (decltype(ggml_threadpool_new) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new") : nullptr;
        g_tp_free = reg ? (decltype(ggml_threadpool_free) *) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free") : nullptr;
        if (!tp_new || !g_tp_free) die("--threadpool: the CPU backend exports no ggml_threadpool_new");
        ggml_threadpool_params tpp;
        ggml_threadpool_params_init(&tpp, a.threads);
        L.tp = tp_new(&tpp);
        if (!L.tp) die("--threadpool: ggml_threadpool_new failed");
        llama_attach_threadpool(L.ctx, L.tp, L.tp);
    }
    L.load_ms = (llama_time_us() - t0) / 1000.0;
    return L;
}

void unload(Loaded & L) {
    if (L.ctx) llama_free(L.ctx);
    if (L.tp && g_tp_free) g_tp_free(L.tp);
    if (L.model) llama_model_free(L.model);
    L = Loaded{};
}

struct RunResult {
    double prompt_ms = 0, ttft_ms = 0, gen_ms = 0;
    std::vector<int> first_eog;              // per sequence, -1 = none
    std::vector<llama_token> tokens0;        // generated tokens of sequence 0
};

RunResult run_once(const Args & a, llama_context * ctx, const llama_vocab * vocab,
                   const std::vector<std::vector<llama_token>> & prompts, int n_gen, llama_batch & batch) {
    const int S = (int) prompts.size();
    RunResult r;
    r.first_eog.assign(S, -1);
    llama_memory_clear(llama_get_memory(ctx), true);

    std::vector<llama_sampler *> smpl(S);
    for (int s = 0; s < S; s++) {
        llama_sampler_chain_params sp = llama_sampler_chain_default_params();
        sp.no_perf = true;
        smpl[s] = llama_sampler_chain_init(sp);
        llama_sampler_chain_add(smpl[s], llama_sampler_init_greedy());
    }
    std::vector<int32_t> logit_idx(S, -1);
    std::vector<llama_pos> pos(S, 0);

    std::vector<llama_token> cur(S, -1);
    auto sample_first = [&](int s) {
        cur[s] = llama_sampler_sample(smpl[s], ctx, logit_idx[s]);
        if (llama_vocab_is_eog(vocab, cur[s]) && r.first_eog[s] < 0) r.first_eog[s] = 0;
        if (s == 0) r.tokens0.push_back(cur[s]);
    };
    // Prompt: all sequences packed into n_batch chunks, logits only on each sequence's last prompt token.
    // llama.cpp keeps only the outputs of the latest llama_decode, so a sequence whose prompt ends in an earlier
    // chunk gets its first token sampled right after that chunk (S > 1 with long prompts); otherwise all first
    // tokens are sampled after the prompt is done.
    std::vector<int> pending;  // sequences whose last prompt token is in the current chunk
    const int64_t t0 = llama_time_us();
    int64_t t_prompt = t0;
    auto flush = [&](bool final_chunk) {
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed on the prompt");
        batch.n_tokens = 0;
        if (!final_chunk) {
            for (int s : pending) sample_first(s);
            pending.clear();
        }
    };
    batch.n_tokens = 0;
    for (int s = 0; s < S; s++) {
        const auto & p = prompts[s];
        for (size_t i = 0; i < p.size(); i++) {
            const bool last = i + 1 == p.size();
            if (last) { logit_idx[s] = batch.n_tokens; pending.push_back(s); }
            batch_add(batch, p[i], pos[s]++, s, last);
            const bool final_token = last && s + 1 == S;
            if (batch.n_tokens == a.batch && !final_token) flush(false);
        }
    }
    flush(true);
    llama_synchronize(ctx);
    t_prompt = llama_time_us();
    r.prompt_ms = (t_prompt - t0) / 1000.0;
    for (int s : pending) sample_first(s);
    const int64_t t_first = llama_time_us();
    r.ttft_ms = (t_first - t0) / 1000.0;

    for (int step = 1; step < n_gen; step++) {
        batch.n_tokens = 0;
        for (int s = 0; s < S; s++) batch_add(batch, cur[s], pos[s]++, s, true);
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed while generating (context full?)");
        for (int s = 0; s < S; s++) {
            cur[s] = llama_sampler_sample(smpl[s], ctx, s);
            if (llama_vocab_is_eog(vocab, cur[s]) && r.first_eog[s] < 0) r.first_eog[s] = step;
            if (s == 0) r.tokens0.push_back(cur[s]);
        }
    }
    const int64_t t_end = llama_time_us();
    r.gen_ms = (t_end - t_first) / 1000.0;
    for (auto * s : smpl) llama_sampler_free(s);
    return r;
}

}  // namespace

int main(int argc, char ** argv) {
    Args a = parse(argc, argv);
    g_verbose = a.verbose;
    llama_log_set(log_cb, nullptr);
    const std::string lib_dir = a.lib_dir.empty() ? libllama_dir() : a.lib_dir;
    const int64_t t_backend0 = llama_time_us();
    ggml_backend_load_all_from_path(lib_dir.c_str());
    llama_backend_init();
    const double backend_ms = (llama_time_us() - t_backend0) / 1000.0;

    // n_ctx: enough for every sequence's prompt and generated tokens.
    int n_ctx = a.ctx;
    const int need = a.sequences * (a.prompt_tokens + a.gen_tokens + 1);
    if (n_ctx <= 0) n_ctx = ((need + 255) / 256) * 256;
    if (n_ctx < need) die("--ctx " + std::to_string(n_ctx) + " is too small: need " + std::to_string(need));

    Loaded L = load(a, n_ctx);
    const double load_ms = L.load_ms;
    double load_warm_ms = NAN;
    if (a.reload) {
        unload(L);
        L = load(a, n_ctx);
        load_warm_ms = L.load_ms;
    }
    const llama_vocab * vocab = llama_model_get_vocab(L.model);
    auto prompts = make_prompts(a, vocab);
    int n_prompt_total = 0;
    for (auto & p : prompts) n_prompt_total += (int) p.size();
    if (n_prompt_total + a.sequences * a.gen_tokens > n_ctx) die("prompts + generated tokens exceed --ctx");

    llama_batch batch = llama_batch_init(std::max(a.batch, a.sequences), 0, 1);

    auto run = [&](int n_gen) { return run_once(a, L.ctx, vocab, prompts, n_gen, batch); };

    if (a.warmup) {
        // page the weights in and warm the caches: a short prompt and a few tokens, like llama.cpp's own warmup
        std::vector<std::vector<llama_token>> w(1, std::vector<llama_token>(prompts[0].begin(),
            prompts[0].begin() + std::min<size_t>(prompts[0].size(), 16)));
        run_once(a, L.ctx, vocab, w, 4, batch);
    }

    std::vector<double> prompt_tps, ttft, decode_tps, agg_tps, e2e_tps, prompt_ms;
    RunResult last;
    for (int r = 0; r < a.repeat; r++) {
        if (a.verbose) std::fprintf(stderr, "phi_loop: repeat %d/%d\n", r + 1, a.repeat);
        last = run(a.gen_tokens);
        prompt_ms.push_back(last.prompt_ms);
        prompt_tps.push_back(n_prompt_total / (last.prompt_ms / 1000.0));
        ttft.push_back(last.ttft_ms);
        if (a.gen_tokens > 1) {
            const double per_seq = (a.gen_tokens - 1) / (last.gen_ms / 1000.0);
            decode_tps.push_back(per_seq);
            agg_tps.push_back(per_seq * a.sequences);
        }
        e2e_tps.push_back((double) a.sequences * a.gen_tokens / ((last.ttft_ms + last.gen_ms) / 1000.0));
    }
    llama_batch_free(batch);

    std::string eog = "[";
    for (size_t s = 0; s < last.first_eog.size(); s++) eog += (s ? "," : "") + std::to_string(last.first_eog[s]);
    eog += "]";
    std::string toks = "[";
    if (a.print_tokens)
        for (size_t i = 0; i < last.tokens0.size(); i++) toks += (i ? "," : "") + std::to_string(last.tokens0[i]);
    toks += "]";
    auto best = [](const std::vector<double> & v) { return v.empty() ? NAN : *std::max_element(v.begin(), v.end()); };
    auto least = [](const std::vector<double> & v) { return v.empty() ? NAN : *std::min_element(v.begin(), v.end()); };

    char desc[256] = "";
    if (ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)) {
        std::snprintf(desc, sizeof desc, "%s", ggml_backend_dev_description(dev));
    }

    std::printf("{\"tool\":\"phi_loop\",\"model\":%s,\"threads\":%d,\"sequences\":%d,\"prompt_tokens\":%d,"
                "\"gen_tokens\":%d,\"n_ctx\":%d,\"batch\":%d,\"repeat\":%d,\"gpu_layers\":%d,\"threadpool\":%s,"
                "\"flash_attn\":\"%s\",\"repack\":%s,\"mmap\":%s,\"backend_ms\":%s,\"load_ms\":%s,\"load_warm_ms\":%s,"
                "\"prompt_ms\":%s,\"prompt_tok_s\":%s,\"prompt_tok_s_best\":%s,\"prompt_tok_s_median\":%s,"
                "\"ttft_ms\":%s,\"ttft_ms_best\":%s,"
                "\"decode_tok_s\":%s,\"decode_tok_s_best\":%s,\"decode_tok_s_median\":%s,"
                "\"aggregate_tok_s\":%s,\"aggregate_tok_s_best\":%s,\"aggregate_tok_s_median\":%s,\"e2e_aggregate_tok_s\":%s,"
                "\"first_eog\":%s,\"tokens\":%s,\"peak_rss_kb\":%ld,\"cpu_ms\":%s,\"cpu\":%s,\"lib_dir\":%s,\"system_info\":%s}\n",
                json_str(a.model).c_str(), a.threads, a.sequences, (int) prompts[0].size(), a.gen_tokens, n_ctx,
                a.batch, a.repeat, a.gpu_layers, a.threadpool ? "true" : "false",
                a.flash_attn < 0 ? "auto" : a.flash_attn ? "on" : "off", a.repack ? "true" : "false", a.mmap ? "true" : "false",
                json_num(backend_ms).c_str(), json_num(load_ms).c_str(), json_num(load_warm_ms).c_str(),
                json_arr(prompt_ms).c_str(), json_arr(prompt_tps).c_str(), json_num(best(prompt_tps)).c_str(),
                json_num(median(prompt_tps)).c_str(),
                json_arr(ttft).c_str(), json_num(least(ttft)).c_str(),
                json_arr(decode_tps).c_str(), json_num(best(decode_tps)).c_str(), json_num(median(decode_tps)).c_str(),
                json_arr(agg_tps).c_str(), json_num(best(agg_tps)).c_str(), json_num(median(agg_tps)).c_str(), json_arr(e2e_tps).c_str(),
                eog.c_str(), toks.c_str(), peak_rss_kb(), json_num(cpu_ms()).c_str(), json_str(desc).c_str(), json_str(lib_dir).c_str(),
                json_str(llama_print_system_info()).c_str());
    std::fflush(stdout);
    unload(L);
    llama_backend_free();
    return 0;
}
