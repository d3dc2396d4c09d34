#include "FilePages.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#endif

FilePages::FilePages(const std::string& path, int fd) {
#if defined(__linux__)
    struct stat st {};
    if ((fd >= 0 ? ::fstat(fd, &st) : ::stat(path.c_str(), &st)) == 0) {
        device_ = (uint64_t)st.st_dev;
        inode_ = (uint64_t)st.st_ino;
        size_ = (uint64_t)st.st_size;
        known_ = true;
    }
#else
    (void)path;
    (void)fd;
#endif
}

uint64_t FilePages::Release(uint64_t upTo) const noexcept {
#if defined(__linux__)
    if (!known_) return 0;
    FILE* maps = std::fopen("/proc/self/maps", "re");
    if (maps == nullptr) return 0;
    uint64_t advised = 0;
    char line[4096];
    while (std::fgets(line, sizeof line, maps) != nullptr) {
        // start-end perms offset major:minor inode [path]
        uintptr_t start = 0, end = 0;
        unsigned long long offset = 0, inode = 0;
        unsigned int major = 0, minor = 0;
        char perms[8] = {0};
        if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %7s %llx %x:%x %llu", &start, &end, perms, &offset, &major,
                        &minor, &inode) != 7)
            continue;
        if (inode != inode_ || (uint64_t)makedev(major, minor) != device_) continue;
        if (perms[1] == 'w') continue;  // only read-only mappings: nothing written there can be lost
        if (offset >= upTo) continue;
        // the part of [start, end) that maps file offsets below upTo, whole pages (start and offset are page-aligned)
        const uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
        const uint64_t len = std::min<uint64_t>(end - start, (upTo - offset) / page * page);
        if (len > 0 && ::madvise(reinterpret_cast<void*>(start), len, MADV_DONTNEED) == 0) advised += len;
    }
    std::fclose(maps);
    return advised;
#else
    return 0;
#endif
}
