//! Float arrays that start on a cache line, for the CPU trainer's hot loops: the model's
//! parameters and Adam's moments ([`crate::model`]), and the CPU trainer's activations,
//! δ and gradients.
//!
//! A `Vec<f32>` of a few hundred kilobytes starts 16 bytes past a 64-byte line (glibc's
//! header before an `mmap`ed block; measured), and a smaller one wherever the allocator
//! puts it. The sparse first layer reads and writes 128-float rows (of δ, of its weight
//! gradient, of the kernel and its moments) with 512-bit vectors, so each such load and
//! store straddled two lines. Aligned δ and gradients made the first-layer backward go
//! from 0.098 to 0.073 ms per step at batch 128 on one thread (0.053 to 0.040 on two)
//! and from 0.292 to 0.215 at batch 512 (step profile on a 2-core AMD EPYC with AVX-512;
//! `benches/RESULTS.md`, "Aligned arrays"). On a 2-core Intel Xeon, where a load that
//! straddles two lines costs more, aligning the parameters and moments as well made the
//! CPU trainer's epochs 10–25% shorter on two threads (`benches/RESULTS.md`, "The
//! parameters on a cache line"). The same bits: alignment changes where values sit,
//! never the order of a sum.
//!
//! Rows stay aligned when the row width is a multiple of 16 floats (128 is). The first
//! layer's weight gradient starts 2·784 floats into the gradient array (after γ and β):
//! 98 whole lines, so its rows are aligned too; the parameter layout starts every tensor
//! on a 256-byte boundary (for wgpu's bindings), so the kernels' rows are aligned in the
//! parameters and the moments.

/// Floats from the start of a 64-byte line. Reads as a `[f32]`.
#[derive(Clone, Default)]
pub struct Aligned {
    lines: Vec<Line>,
    len: usize,
}

/// A batch's activations or their gradients, `[batch, width]` row by row.
pub type Rows = Aligned;

/// One cache line of floats: the unit [`Aligned`] allocates in, for its alignment.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct Line([f32; PER_LINE]);

const PER_LINE: usize = 16;
const ZERO_LINE: Line = Line([0.0; PER_LINE]);

impl Aligned {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        Aligned {
            lines: vec![ZERO_LINE; len.div_ceil(PER_LINE)],
            len,
        }
    }

    /// Sets the length to `len` in place (the allocation is kept, and grows only past
    /// its capacity): the values up to the old length are kept, zeros follow.
    pub fn resize(&mut self, len: usize) {
        // Values past the old length in the lines already held are stale; added lines
        // come zeroed.
        let stale = self.len.min(len)..len.min(self.lines.len() * PER_LINE);
        self.lines.resize(len.div_ceil(PER_LINE), ZERO_LINE);
        self.len = len;
        self[stale].fill(0.0);
    }
}

/// A copy of `values`, from the start of a line (a file's or a GPU buffer's values, read
/// into a `Vec` first).
impl From<Vec<f32>> for Aligned {
    fn from(values: Vec<f32>) -> Self {
        let mut aligned = Aligned::zeros(values.len());
        aligned.copy_from_slice(&values);
        aligned
    }
}

/// Compares the values, as a `[f32]` would.
impl PartialEq for Aligned {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Prints the values, as a `[f32]` would.
impl std::fmt::Debug for Aligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Lets a list of them be joined with `concat`, as a list of `Vec<f32>` can.
impl std::borrow::Borrow<[f32]> for Aligned {
    fn borrow(&self) -> &[f32] {
        self
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_keeps_its_values() {
        let mut a = Aligned::zeros(100);
        assert_eq!(a.len(), 100);
        assert_eq!(a.as_ptr() as usize % 64, 0);
        a[99] = 7.0;
        a[39] = 5.0;
        a.resize(40);
        assert_eq!(a.len(), 40);
        a.resize(200);
        // 5 kept; 7 (past the shorter length, in a line that was kept) zeroed again.
        assert_eq!((a[39], a[40], a[99], a.len()), (5.0, 0.0, 0.0, 200));
        assert_eq!(a.as_ptr() as usize % 64, 0);
        assert!(Aligned::default().is_empty());
        assert!(Aligned::zeros(0).is_empty());
    }
}
