//! A hint to the CPU to start loading memory the program is about to read.
//!
//! The one place in the crate with `unsafe`: `_mm_prefetch` is an `unsafe fn` because it takes
//! a raw pointer, but a prefetch never dereferences it in the program's sense. It cannot fault,
//! whatever the address, and it changes nothing the program can observe but timing.

/// Asks the CPU to bring the first cache lines of `value` (up to four, 256 bytes) into cache,
/// without waiting for them. A no-op where there is no stable prefetch instruction to call.
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const LINE: usize = 64;
        let start = std::ptr::from_ref(value).cast::<i8>();
        for line in 0..size_of::<T>().div_ceil(LINE).clamp(1, 4) {
            // SAFETY: a prefetch is a hint: it never faults and never reads into the program,
            // whatever the address (the address here is inside `value` in any case). The
            // instruction is SSE, which every x86_64 target has.
            #[allow(unsafe_code)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line * LINE));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
