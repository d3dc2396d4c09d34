// FilePages: gives back this process's resident pages of a memory-mapped model file.
//
// llama.cpp maps the GGUF and reads every tensor through that mapping. Tensors that end up somewhere else (the CPU's
// repacked weight buffers, or a GPU) are never read through the mapping again, yet the pages they touched stay
// mapped and count in the process's RSS until the model is freed: with repacking on, a Phi-2 Q4_K_M costs its file
// size twice. Release() tells the kernel (madvise MADV_DONTNEED) that this process no longer needs the file's
// pages: they leave the RSS, stay in the page cache, and anything still read through the mapping (token embeddings,
// weights that are not repacked) is faulted back in from the page cache on first use. The data cannot change or be
// lost: the mapping is a read-only mapping of an unchanged file. Another model of the same file in this process (a
// second mapping) loses its resident pages too, and faults them back in the same way on its next use.
//
// Linux only (it reads /proc/self/maps); elsewhere Release() does nothing.
#pragma once

#include <cstdint>
#include <string>

class FilePages {
public:
    // Records the file's identity (device, inode, size): of the open descriptor `fd` when given, else of `path`.
    explicit FilePages(const std::string& path, int fd = -1);
    // Drops this process's pages of every mapping of the file that hold file offsets below `upTo` (default: all);
    // returns the bytes advised (0 when none, or when unsupported). noexcept: called from llama.cpp's progress
    // callback, a C frame.
    uint64_t Release(uint64_t upTo = UINT64_MAX) const noexcept;
    uint64_t FileSize() const { return size_; }

private:
    uint64_t device_ = 0;
    uint64_t size_ = 0;
    uint64_t inode_ = 0;
    bool known_ = false;
};
