// diffattn/simt/smem.hpp: shared-memory pointers that the emulator can check.
//
// Kernels reach shared memory only through smem_ptr<T> (from simt::shared_memory<T>()). On the
// device it is a plain T* into the block's shared window; on the host it is a byte offset into
// the emulated block's buffer, and every access through it is checked: bounds, alignment (an
// access of a power-of-two size up to 16 bytes must be aligned to its size, as the hardware's
// ld.shared/st.shared), and cp.async poisoning (emu/runtime.hpp).
//
//   smem_ptr<float> s = simt::shared_memory<float>();   // (kRows, kCols) tile at offset 0
//   s[i] = x;  float y = s[j];  s[k] += 1.f;            // element access, both sides
//   u32x4 v = s.cast<u32x4>()[q].load();               // struct elements: load()/store()
//
// On the host, s[i] is a proxy (smem_ref<T>) that converts to T; write `T v = s[i];` rather than
// `auto v = s[i];`, and use load()/store() for struct members.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "diffattn/simt/config.hpp"
#if DIFFATTN_SIMT_EMULATED
#include "diffattn/simt/emu/runtime.hpp"
#endif

DIFFATTN_NAMESPACE_BEGIN
namespace simt {

/// 16-byte vector of four 32-bit words (one ld.shared.v4 / cp.async chunk / 8 halves).
struct alignas(16) u32x4 {
  std::uint32_t x, y, z, w;
};
/// 8-byte vector of two 32-bit words.
struct alignas(8) u32x2 {
  std::uint32_t x, y;
};

namespace detail {
/// Alignment the hardware requires of a shared access of type T.
template <class T>
constexpr std::size_t smem_align() {
  return (sizeof(T) & (sizeof(T) - 1)) == 0 ? (sizeof(T) < 16 ? sizeof(T) : 16) : alignof(T);
}
}  // namespace detail

#if DIFFATTN_SIMT_EMULATED
/// Host proxy for one shared-memory element: every read and write is checked.
template <class T>
class smem_ref {
  static_assert(std::is_trivially_copyable<T>::value, "shared memory holds trivially copyable T");

 public:
  explicit smem_ref(std::int64_t off) : off_(off) {}
  smem_ref(const smem_ref&) = default;
  /// Checked read (ld.shared).
  T load() const {
    T v;
    std::memcpy(&v, access(false), sizeof(T));
    return v;
  }
  /// Checked write (st.shared).
  void store(const T& v) const {
    static_assert(!std::is_const<T>::value, "store through smem_ptr<const T>");
    std::memcpy(access(true), &v, sizeof(T));
  }
  operator T() const { return load(); }  // NOLINT: reads like T&
  const smem_ref& operator=(const T& v) const {
    store(v);
    return *this;
  }
  const smem_ref& operator=(const smem_ref& o) const {
    store(o.load());
    return *this;
  }
  template <class U> const smem_ref& operator+=(const U& v) const { return *this = T(load() + v); }
  template <class U> const smem_ref& operator-=(const U& v) const { return *this = T(load() - v); }
  template <class U> const smem_ref& operator*=(const U& v) const { return *this = T(load() * v); }
  template <class U> const smem_ref& operator/=(const U& v) const { return *this = T(load() / v); }
  template <class U> const smem_ref& operator|=(const U& v) const { return *this = T(load() | v); }
  template <class U> const smem_ref& operator&=(const U& v) const { return *this = T(load() & v); }
  template <class U> const smem_ref& operator^=(const U& v) const { return *this = T(load() ^ v); }

 private:
  unsigned char* access(bool write) const {
    auto& f = emu::detail::current("shared memory access");
    return f.blk->smem_access(&f, off_, sizeof(T), detail::smem_align<T>(), write,
                              write ? "st.shared" : "ld.shared");
  }
  std::int64_t off_;
};
#endif

/// Pointer to T in the block's dynamic shared memory. Device: T*; host: checked byte offset.
template <class T>
class smem_ptr {
 public:
  using element_type = T;
#if DIFFATTN_SIMT_EMULATED
  using reference = smem_ref<T>;
#else
  using reference = T&;
#endif

  smem_ptr() = default;
#if DIFFATTN_SIMT_EMULATED
  /// Host: the element at byte `byte_offset` of the block's dynamic shared memory.
  explicit smem_ptr(std::int64_t byte_offset) : off_(byte_offset) {}
  /// Host: byte offset from the start of dynamic shared memory.
  std::int64_t byte_offset() const { return off_; }
#else
  DIFFATTN_HD explicit smem_ptr(T* p) : p_(p) {}
  /// Device: the generic pointer.
  DIFFATTN_HD T* get() const { return p_; }
  /// Device: the 32-bit .shared window address (operand of ldmatrix and cp.async).
  DIFFATTN_DEVICE std::uint32_t smem_addr() const {
#if DIFFATTN_DEVICE_PASS
    return static_cast<std::uint32_t>(__cvta_generic_to_shared(p_));
#else
    DIFFATTN_SIMT_HOST_PASS_STUB();
#endif
  }
#endif

  /// Pointer arithmetic in elements.
  DIFFATTN_HD smem_ptr operator+(std::ptrdiff_t n) const {
#if DIFFATTN_SIMT_EMULATED
    return smem_ptr(off_ + n * static_cast<std::ptrdiff_t>(sizeof(T)));
#else
    return smem_ptr(p_ + n);
#endif
  }
  DIFFATTN_HD smem_ptr operator-(std::ptrdiff_t n) const { return *this + (-n); }
  DIFFATTN_HD smem_ptr& operator+=(std::ptrdiff_t n) { return *this = *this + n; }
  DIFFATTN_HD smem_ptr& operator-=(std::ptrdiff_t n) { return *this = *this - n; }

  /// The same address seen as U* (reinterpret_cast; alignment is checked at access time).
  template <class U>
  DIFFATTN_HD smem_ptr<U> cast() const {
#if DIFFATTN_SIMT_EMULATED
    return smem_ptr<U>(off_);
#else
    return smem_ptr<U>(reinterpret_cast<U*>(p_));
#endif
  }
  /// Adds a byte offset (for carving one buffer into tiles).
  DIFFATTN_HD smem_ptr byte_add(std::ptrdiff_t bytes) const {
#if DIFFATTN_SIMT_EMULATED
    return smem_ptr(off_ + bytes);
#else
    return smem_ptr(reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(p_) + bytes));
#endif
  }

  /// Element i (device T&, host checked proxy).
  DIFFATTN_HD reference operator[](std::ptrdiff_t i) const {
#if DIFFATTN_SIMT_EMULATED
    return reference(off_ + i * static_cast<std::ptrdiff_t>(sizeof(T)));
#else
    return p_[i];
#endif
  }
  DIFFATTN_HD reference operator*() const { return (*this)[0]; }
  /// Reads *this (ld.shared); host: checked.
  DIFFATTN_HD T load() const {
#if DIFFATTN_SIMT_EMULATED
    return reference(off_).load();
#else
    return *p_;
#endif
  }
  /// Writes *this (st.shared); host: checked.
  DIFFATTN_HD void store(const T& v) const {
#if DIFFATTN_SIMT_EMULATED
    reference(off_).store(v);
#else
    *p_ = v;
#endif
  }

 private:
#if DIFFATTN_SIMT_EMULATED
  std::int64_t off_ = 0;
#else
  T* p_ = nullptr;
#endif
};

namespace detail {
/// Host: byte offset; device: .shared window address. For ldmatrix and cp.async operands.
template <class T>
DIFFATTN_DEVICE auto smem_operand(const smem_ptr<T>& p) {
#if DIFFATTN_SIMT_EMULATED
  return p.byte_offset();
#else
  return p.smem_addr();
#endif
}
}  // namespace detail

}  // namespace simt
DIFFATTN_NAMESPACE_END
