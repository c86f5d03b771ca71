// Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later): eight tile
// registers of up to 16 rows x 64 bytes and one instruction that multiplies two
// tiles into a third, 16 x 16 x 64 int8 or 16 x 16 x 32 bf16 multiply-adds. One
// tdpbusd does 16x the work of a vpdpbusd, so where AMX exists the prefill and
// the few-token verification of drafts stop being bound by arithmetic.
//
// Using it takes three things beyond the CPUID bits: the kernel must have
// enabled the tile state in XCR0, the process must ask Linux for permission to
// use it (arch_prctl ARCH_REQ_XCOMP_PERM, once, process-wide: threads started
// later inherit it), and each thread must load a tile configuration (ldtilecfg)
// before its first tile instruction. `usable()` does the first two once;
// `Tiles` does the third.
#pragma once

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

#define KERN_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,amx-tile,amx-int8,amx-bf16")))

namespace kern::amx {

struct Support {
  bool int8 = false, bf16 = false;
};

// Leaf 7's EDX: AMX-BF16 is bit 22, AMX-TILE 24, AMX-INT8 25. XCR0 bits 17 and 18 are the
// tile configuration and data state the kernel saves; without them a tile instruction faults.
inline Support detect() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return {};
  const bool tile = edx & (1u << 24);
  if (!tile) return {};
  uint32_t xcr0_lo, xcr0_hi;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & (3u << 17)) != (3u << 17)) return {};
  // ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; refused by kernels before 5.16 and some VMs
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  if (syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) != 0) return {};
  return Support{static_cast<bool>(edx & (1u << 25)), static_cast<bool>(edx & (1u << 22))};
}

// What this CPU and OS let the process use, found once.
inline Support usable() {
  static const Support support = detect();
  return support;
}

// The 64-byte operand of ldtilecfg (palette 1): per tile, its rows and bytes per row.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// A thread's tile configuration for one kernel call: loads it on construction and releases
// the tile state (so the OS need not save it at a context switch) on destruction.
class Tiles {
 public:
  KERN_TARGET_AMX Tiles(const TileConfig& config) { _tile_loadconfig(&config); }
  KERN_TARGET_AMX ~Tiles() { _tile_release(); }
  Tiles(const Tiles&) = delete;
  Tiles& operator=(const Tiles&) = delete;
};

}  // namespace kern::amx
