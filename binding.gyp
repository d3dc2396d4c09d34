{
  # The addon compiles against the headers of the llama.cpp release that the prebuilt @node-llama-cpp/<platform>
  # libraries were built from (unpacked into deps/llama.cpp by scripts/setup-llama.mjs) and opens those libraries
  # at run time (native/LlamaLib.cpp), so one binary serves the CPU, CUDA, Vulkan and Metal library sets.
  "variables": {
    "llama_dir%": "deps/llama.cpp"
  },
  "targets": [
    {
      "target_name": "phi_agent",
      "sources": [
        "native/addon.cpp",
        "native/LlamaLib.cpp",
        "native/NativeModel.cpp",
        "native/NativeEngine.cpp",
        "native/FilePages.cpp",
        "native/TextStream.cpp",
        "native/PromptCache.cpp",
        "native/Sampler.cpp"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<(llama_dir)/include",
        "<(llama_dir)/ggml/include"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NAPI_CPP_EXCEPTIONS",
        # a Napi call that fails because the environment is going away (worker.terminate(), exit) must not throw
        # out of a completion callback's C frame (std::terminate): see native/Common.h NoThrow
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-Wall", "-Wno-unused-parameter"],
      "conditions": [
        ["OS=='linux'", { "libraries": ["-ldl"], "ldflags": ["-Wl,--as-needed"] }],
        ["OS=='mac'", {
          "xcode_settings": {
            "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
            "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
            "MACOSX_DEPLOYMENT_TARGET": "11.0",
            "OTHER_CPLUSPLUSFLAGS": ["-O2"]
          }
        }],
        ["OS=='win'", {
          "msvs_settings": { "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17"] } },
          "defines": ["NOMINMAX", "WIN32_LEAN_AND_MEAN"]
        }]
      ]
    }
  ]
}
