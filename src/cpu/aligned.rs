//! Arrays that start on a cache line, for the CPU trainer's hot loops.
//!
//! A `Vec`'s allocation of a few hundred kilobytes starts 16 bytes past a 64-byte line
//! (glibc's header before an `mmap`ed block; measured), and smaller ones wherever the
//! allocator puts them. The sparse first layer reads and writes 128-float rows (of
//! δ, of its weight gradient) with 512-bit vectors, so each such load and store
//! straddled two lines. Aligned, on a 2-core AMD EPYC (AVX-512; `cargo bench --bench
//! kernels -- step`, medians of five), the first-layer backward went from 0.098 to
//! 0.074 ms per step at batch 128 on one thread (0.054 to 0.040 on two) and from 0.296
//! to 0.212 at batch 512; a whole batch-512 epoch from 0.148 to 0.133 s on one thread
//! and 0.086 to 0.076 s on two (`mnist-gpu train --cpu-fallback`, medians of 12). The
//! same bits: alignment changes where values sit, never the order of a sum.

use bytemuck::Pod;
use std::marker::PhantomData;

/// `len` values of `T` from the start of a 64-byte line. Reads as a `[T]`.
#[derive(Clone)]
pub struct Aligned<T> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

/// A batch's activations or gradients, `[batch, width]` row by row.
pub type Rows = Aligned<f32>;

/// One cache line: the unit [`Aligned`] allocates in, for its alignment.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl<T: Pod> Aligned<T> {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _values: PhantomData,
        }
    }

    /// Sets the length to `len`: values kept up to it, zeros after.
    pub fn resize(&mut self, len: usize) {
        let bytes = len * std::mem::size_of::<T>();
        self.lines.resize(bytes.div_ceil(64), Line([0; 64]));
        let kept = self.len.min(len);
        self.len = len;
        self[kept..].fill(T::zeroed());
    }
}

impl<T: Pod> Default for Aligned<T> {
    fn default() -> Self {
        Aligned::zeros(0)
    }
}

impl<T: Pod> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_keeps_its_values() {
        let mut a = Aligned::<u16>::zeros(100);
        assert_eq!(a.len(), 100);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        a[99] = 7;
        a.resize(40);
        assert_eq!(a.len(), 40);
        a[39] = 5;
        a.resize(200);
        assert_eq!((a[39], a[40], a[99], a.len()), (5, 0, 0, 200));
        assert_eq!(a.as_ptr() as usize % 64, 0);
        let f = Rows::zeros(3);
        assert_eq!(&f[..], &[0.0f32; 3]);
        assert!(Rows::default().is_empty());
    }
}
