// diffattn/cuda/detail/tile_loader.hpp: the tile-streaming pipeline of the CUDA kernels.
//
//   TileLoader<kThreads, kRows, kCols, kSmemStride> k(first_tile, row_stride, tid);
//   stream_key_tiles(nb_begin, nb_end,
//                    [&](int stage, int nb) { k.load(buffer(stage), valid_rows(nb)); },
//                    [&](int stage, int nb) { ...compute on buffer(stage)... });
//
// Device components (they take the thread's rank and their shared buffers as arguments): the
// forward kernel is built from them, and the backward, decode and Hopper kernels will be.
#pragma once

#include <cstdint>

#include "diffattn/core/config.hpp"
#include "diffattn/core/params.hpp"
#include "diffattn/simt/cp_async.hpp"
#include "diffattn/simt/smem.hpp"
#include "diffattn/simt/thread.hpp"

DIFFATTN_NAMESPACE_BEGIN
namespace cuda {
namespace detail {

/// The first element (token 0) of head `hh` of batch `bb` of a 16-bit tensor: the base the
/// kernels' tile loaders start from.
DIFFATTN_DEVICE const std::uint16_t* head_base(const ConstTensorRef& r, std::int64_t bb, std::int64_t hh) {
  return static_cast<const std::uint16_t*>(r.ptr) + bb * r.stride_b + hh * r.stride_h;
}

/// Copies consecutive (kRows, kCols) tiles of 16-bit elements (global row stride `gstride`
/// elements, 16-byte aligned) into shared tiles of row stride kSmemStride with 16-byte cp.async;
/// all kThreads threads of the block call load() with the same arguments.
///
/// Each thread's share of a tile is fixed: when kThreads is a multiple of the chunks per row, a
/// thread copies one column of chunks, rows kRowStep apart. Its global pointer, row step and
/// shared offset are set once and the pointer moves on by one tile per load(), so that a chunk
/// costs one 64-bit add and one LDGSTS, and a tile needs no trip-count code (SASS model: the
/// per-chunk address code recomputed every tile was 184 of 641 instructions of the d = 64 key
/// tile and 286 of 562 of the d = 128 pass 2, reading of commit 4d89025). Only a ragged tile
/// (fewer than kRows rows left) takes the zero-filling path.
/// kTwoHalves: columns [kCols / 2, kCols) come from a second base (the constructor's `upper`).
/// kRolled: the general form's per-chunk loop stays rolled, its positions recomputed per chunk
/// rather than hoisted out of the caller's tile loop into registers (unrolled, the backward's
/// main kernel at d = 96 spilled: 148 B for sm_80 at 255 registers; rolled it takes 244, nvcc
/// 13.0). No effect on the columnwise form.
template <int kThreads, int kRows, int kCols, int kSmemStride, bool kTwoHalves = false, bool kRolled = false>
class TileLoader {
 public:
  static constexpr int kChunksPerRow = kCols / 8;
  static_assert(kCols % 8 == 0, "tiles move in 16-byte chunks of 8 elements");
  static_assert((kSmemStride * 2) % 16 == 0, "shared rows must be 16-byte aligned");
  /// one column of chunks per thread (the fast form) when the threads tile whole rows
  static constexpr bool kColumnwise = kThreads % kChunksPerRow == 0;
  static constexpr int kRowStep = kColumnwise ? kThreads / kChunksPerRow : 0;
  static constexpr int kChunks = kRows * kChunksPerRow;
  static constexpr int kPerThread =
      kColumnwise ? (kRows + kRowStep - 1) / kRowStep : (kChunks + kThreads - 1) / kThreads;

  /// `first_tile`: row 0 of the first tile load() copies; `gstride`: elements between rows.
  /// `upper` (optional): where columns [kCols / 2, kCols) come from instead, row 0 of its first
  /// tile, the same row stride (V's two halves of d channels, v_lo and v_hi, which may lie at
  /// unrelated addresses: HF DiffLlama's two KV heads). A thread's columns are fixed, so in the
  /// columnwise form the choice is made once, here, and costs nothing per tile (the SASS model:
  /// two loaders of d columns instead had cost 18 instructions per 16 keys at d = 32).
  DIFFATTN_DEVICE TileLoader(const std::uint16_t* first_tile, std::int64_t gstride, unsigned tid,
                             const std::uint16_t* upper = nullptr)
      : gstride_(gstride), tid_(static_cast<int>(tid)) {
    if constexpr (kColumnwise) {
      row_ = tid_ / kChunksPerRow;
      const int col = (tid_ % kChunksPerRow) * 8;
      soff_ = row_ * kSmemStride + col;
      src_ = kTwoHalves && upper != nullptr && col >= kCols / 2 ? upper + row_ * gstride + (col - kCols / 2)
                                                  : first_tile + row_ * gstride + col;
    } else {
      src_ = first_tile;
      if constexpr (kTwoHalves) upper_ = upper != nullptr ? upper : first_tile + kCols / 2;
    }
  }

  /// Restarts at another tile (a paged cache: each key tile's rows lie in one page), as the
  /// constructor would with the same row stride.
  DIFFATTN_DEVICE void seek(const std::uint16_t* first_tile, const std::uint16_t* upper = nullptr) {
    *this = TileLoader(first_tile, gstride_, static_cast<unsigned>(tid_), upper);
  }

  /// Moves on by `tiles` tiles without copying (to the first visible tile of a masked row block).
  DIFFATTN_DEVICE void skip(int tiles) {
    src_ += static_cast<std::int64_t>(tiles) * kRows * gstride_;
    if constexpr (!kColumnwise && kTwoHalves) upper_ += static_cast<std::int64_t>(tiles) * kRows * gstride_;
  }

  /// Issues this thread's copies of the next tile into `dst` (rows at or past `valid_rows` are
  /// zero-filled) and moves on to the tile after it. Does not commit.
  DIFFATTN_DEVICE void load(simt::smem_ptr<std::uint16_t> dst, std::int64_t valid_rows) {
    if (valid_rows >= kRows) {
      copy<false>(dst, kRows);
    } else {
      copy<true>(dst, valid_rows);
    }
  }

 private:
  template <bool kRagged>
  DIFFATTN_DEVICE void copy(simt::smem_ptr<std::uint16_t> dst, std::int64_t valid_rows) {
    if constexpr (kColumnwise) {
      const std::uint16_t* p = src_;
      DIFFATTN_UNROLL
      for (int i = 0; i < kPerThread; ++i) {
        const int r = row_ + i * kRowStep;
        if (kRows % kRowStep == 0 || r < kRows) {
          const simt::smem_ptr<std::uint16_t> d = dst + (soff_ + i * kRowStep * kSmemStride);
          if constexpr (kRagged) {
            const bool ok = r < valid_rows;  // else: zero-fill, nothing read (row 0 as a valid address)
            simt::cp_async_16_zfill(d, ok ? p : src_ - static_cast<std::int64_t>(row_) * gstride_, ok ? 16 : 0);
          } else {
            simt::cp_async_16(d, p);
          }
        }
        p += kRowStep * gstride_;
      }
      src_ += kRows * gstride_;
    } else {
      // general form (chunks per row not dividing the threads, e.g. d = 96): positions per chunk
      if constexpr (kRolled) {
        DIFFATTN_NO_UNROLL
        for (int i = 0; i < kPerThread; ++i) general_chunk<kRagged>(dst, valid_rows, i);
      } else {
        DIFFATTN_UNROLL
        for (int i = 0; i < kPerThread; ++i) general_chunk<kRagged>(dst, valid_rows, i);
      }
      src_ += kRows * gstride_;
      if constexpr (kTwoHalves) upper_ += kRows * gstride_;
    }
  }

  /// chunk tid + i kThreads of the general form
  template <bool kRagged>
  DIFFATTN_DEVICE void general_chunk(simt::smem_ptr<std::uint16_t> dst, std::int64_t valid_rows, int i) {
    const int c = tid_ + i * kThreads;
    if (kChunks % kThreads != 0 && c >= kChunks) return;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const simt::smem_ptr<std::uint16_t> d = dst + (r * kSmemStride + col);
    const bool ok = !kRagged || r < valid_rows;
    const std::uint16_t* from =
        !kTwoHalves || col < kCols / 2 ? src_ + r * gstride_ + col : upper_ + r * gstride_ + (col - kCols / 2);
    simt::cp_async_16_zfill(d, ok ? from : src_, ok ? 16 : 0);
  }

  const std::uint16_t* src_;  // columnwise: this thread's first chunk of the next tile; else row 0
  const std::uint16_t* upper_ = nullptr;  // general form: row 0 of the upper columns' next tile
  std::int64_t gstride_;
  int tid_;
  int row_ = 0;   // columnwise: the row of this thread's first chunk in a tile
  int soff_ = 0;  // columnwise: its shared offset in elements
};

/// The key-tile loop: tiles [nb_begin, nb_end) through two shared buffers (stages), one barrier
/// per tile. load(stage, nb) issues tile nb's copies into buffer `stage` (no commit); body(stage,
/// nb) computes on it while tile nb + 1 is in flight. Copies issued before the call (Q) join the
/// first group. A caller that reuses the buffers after the loop must synchronise the block first.
///
/// Why one barrier is enough: the barrier of iteration nb follows every warp's body(nb - 1), which
/// was the last reader of the buffer the prefetch of tile nb + 1 then refills; and it follows
/// every thread's wait for its own copies of tile nb (two barriers per tile cost 1024 barriers per
/// block at d = 64 in the first kernel).
template <class Load, class Body>
DIFFATTN_DEVICE void stream_key_tiles(int nb_begin, int nb_end, Load&& load, Body&& body) {
  if (nb_begin < nb_end) load(0, nb_begin);
  simt::cp_async_commit();
  for (int nb = nb_begin; nb < nb_end; ++nb) {
    const int stage = (nb - nb_begin) & 1;
    simt::cp_async_wait<0>();  // this thread's copies of tile nb have landed
    simt::syncthreads();       // everyone's have, and every warp is done with tile nb - 1
    if (nb + 1 < nb_end) load(stage ^ 1, nb + 1);
    simt::cp_async_commit();
    body(stage, nb);
  }
  simt::cp_async_wait<0>();  // the last group is empty: nothing in flight at return
}

}  // namespace detail
}  // namespace cuda
DIFFATTN_NAMESPACE_END
