//! GEMM, the three forms a dense layer needs (row-major everywhere; shapes are
//! `x: [m, k]`, `w: [k, n]`, `y/dy: [m, n]`). Backed by `matrixmultiply` (cache-blocked,
//! SIMD), split over a rayon pool by [`par_sgemm`]; [`gemm_naive`] is the plain triple loop kept as the test oracle.
//! GPU twin: `gemm.wgsl` beside it.

use rayon::prelude::*;

/// Work (m·k·n multiply-adds) below which a GEMM runs on one thread: splitting smaller
/// ones costs more in synchronisation than it saves.
pub const PARALLEL_MIN_WORK: usize = 1 << 17;

/// A read-only strided matrix view: element (i, j) is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// A writable strided matrix view.
#[derive(Clone, Copy)]
struct ViewMut {
    ptr: *mut f32,
    rs: isize,
    cs: isize,
}

impl View {
    /// The same view starting `elements` further on.
    ///
    /// # Safety
    /// The new start must lie inside the matrix the view addresses.
    unsafe fn shifted(self, elements: isize) -> View {
        View {
            ptr: self.ptr.offset(elements),
            ..self
        }
    }
}

impl ViewMut {
    /// The same view starting `elements` further on.
    ///
    /// # Safety
    /// The new start must lie inside the matrix the view addresses.
    unsafe fn shifted(self, elements: isize) -> ViewMut {
        ViewMut {
            ptr: self.ptr.offset(elements),
            ..self
        }
    }
}

// SAFETY: the views are only sent to the two halves of a `rayon::join`, which write
// disjoint parts of the output and only read the inputs; the borrowed slices behind the
// pointers outlive the join.
unsafe impl Send for View {}
unsafe impl Sync for View {}
unsafe impl Send for ViewMut {}
unsafe impl Sync for ViewMut {}

/// `c = a·b + beta·c` for `a: [m, k]`, `b: [k, n]`, split over the rayon pool: the larger
/// of m and n is halved recursively so each thread owns a disjoint block of `c` (and packs
/// only its share of the inputs). Every element of `c` is summed over k in the same order
/// whatever the split, so results are deterministic.
///
/// # Safety
/// The views must address valid `m×k`, `k×n` and `m×n` matrices, `c` not aliasing a or b.
#[allow(clippy::too_many_arguments)]
unsafe fn par_sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: View,
    b: View,
    beta: f32,
    c: ViewMut,
    parts: usize,
) {
    if parts <= 1 || m * k * n < PARALLEL_MIN_WORK || m.max(n) < 16 {
        matrixmultiply::sgemm(
            m, k, n, 1.0, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs,
        );
        return;
    }
    let (left, right) = (parts / 2, parts - parts / 2);
    // Split the longer of m and n; round to 8 so each half keeps whole SIMD micro-tiles.
    let by_columns = n >= m;
    let first = ((if by_columns { n } else { m }) * left / parts).div_ceil(8) * 8;
    let (a2, b2, c2, (m1, n1), (m2, n2)) = if by_columns {
        let b2 = b.shifted(first as isize * b.cs);
        let c2 = c.shifted(first as isize * c.cs);
        (a, b2, c2, (m, first), (m, n - first))
    } else {
        let a2 = a.shifted(first as isize * a.rs);
        let c2 = c.shifted(first as isize * c.rs);
        (a2, b, c2, (first, n), (m - first, n))
    };
    rayon::join(
        || par_sgemm(m1, k, n1, a, b, beta, c, left),
        || par_sgemm(m2, k, n2, a2, b2, beta, c2, right),
    );
}

fn view(data: &[f32], rs: usize, cs: usize) -> View {
    View {
        ptr: data.as_ptr(),
        rs: rs as isize,
        cs: cs as isize,
    }
}

fn view_mut(data: &mut [f32], rs: usize, cs: usize) -> ViewMut {
    ViewMut {
        ptr: data.as_mut_ptr(),
        rs: rs as isize,
        cs: cs as isize,
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// Forward: `y = x · w + bias`, then ReLU when `relu` is set.
#[allow(clippy::too_many_arguments)]
pub fn gemm_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
    relu: bool,
    y: &mut [f32],
) {
    check_lens(&[(x, m * k), (w, k * n), (bias, n)], y, m * n);
    for row in y.chunks_exact_mut(n) {
        row.copy_from_slice(bias);
    }
    // SAFETY: the lengths were checked above against the shapes and strides passed here.
    unsafe {
        par_sgemm(
            m,
            k,
            n,
            view(x, k, 1),
            view(w, n, 1),
            1.0,
            view_mut(y, n, 1),
            threads(),
        )
    };
    if relu {
        crate::layers::relu::cpu::relu_forward(y);
    }
}

/// Weight gradient: `dw = xᵀ · dy`, shape `[k, n]`.
pub fn gemm_weight_grad(x: &[f32], dy: &[f32], m: usize, k: usize, n: usize, dw: &mut [f32]) {
    check_lens(&[(x, m * k), (dy, m * n)], dw, k * n);
    // SAFETY: lengths checked; xᵀ is read through swapped strides.
    unsafe {
        par_sgemm(
            k,
            m,
            n,
            view(x, 1, k),
            view(dy, n, 1),
            0.0,
            view_mut(dw, n, 1),
            threads(),
        )
    };
}

/// Input gradient: `dx = dy · wᵀ`, shape `[m, k]`; when `mask` (the layer's ReLU output,
/// `[m, k]`) is given, entries where `mask <= 0` are zeroed (ReLU backward, fused).
pub fn gemm_input_grad(
    dy: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
    mask: Option<&[f32]>,
    dx: &mut [f32],
) {
    check_lens(&[(dy, m * n), (w, k * n)], dx, m * k);
    if let Some(mask) = mask {
        assert_eq!(mask.len(), m * k);
    }
    if n <= NARROW_MAX {
        input_grad_narrow(dy, w, (m, k, n), mask, dx);
        return;
    }
    // SAFETY: lengths checked; wᵀ is read through swapped strides.
    unsafe {
        par_sgemm(
            m,
            n,
            k,
            view(dy, n, 1),
            view(w, 1, n),
            0.0,
            view_mut(dx, k, 1),
            threads(),
        )
    };
    if let Some(mask) = mask {
        crate::layers::relu::cpu::relu_backward_in_place(dx, mask);
    }
}

/// Reduction depths up to this take [`input_grad_narrow`]: matrixmultiply packs whole
/// panels even for a product only n multiply-adds deep (the 10-class output layer).
const NARROW_MAX: usize = 16;
/// Rows per task below which [`input_grad_narrow`] stays on one thread.
const NARROW_MIN_ROWS: usize = 64;

/// `dx = dy·wᵀ` for a narrow n (the shape is `(m, k, n)` as in [`gemm_input_grad`]): wᵀ
/// is copied to `[n, k]`, then each row of dx is n contiguous axpys (c = 0..n in order)
/// with the ReLU mask applied as the row finishes.
fn input_grad_narrow(
    dy: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    mask: Option<&[f32]>,
    dx: &mut [f32],
) {
    let mut wt = vec![0.0f32; n * k];
    for (i, w_row) in w.chunks_exact(n).enumerate() {
        for (c, &v) in w_row.iter().enumerate() {
            wt[c * k + i] = v;
        }
    }
    let rows_per_task = NARROW_MIN_ROWS.max(m.div_ceil(threads())).max(1);
    dx.par_chunks_mut(rows_per_task * k)
        .enumerate()
        .for_each(|(t, part)| {
            let first = t * rows_per_task;
            let rows = part.len() / k.max(1);
            let dy_part = &dy[first * n..(first + rows) * n];
            let mask_part = mask.map(|mask| &mask[first * k..(first + rows) * k]);
            narrow_rows(dy_part, &wt, n, mask_part, part);
        });
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn narrow_rows(dy: &[f32], wt: &[f32], n: usize, mask: Option<&[f32]>, dx: &mut [f32]) {
    let k = wt.len() / n.max(1);
    for (b, row) in dx.chunks_exact_mut(k).enumerate() {
        row.fill(0.0);
        for (c, &a) in dy[b * n..(b + 1) * n].iter().enumerate() {
            for (out, &v) in row.iter_mut().zip(&wt[c * k..(c + 1) * k]) {
                *out += a * v;
            }
        }
        if let Some(mask) = mask {
            for (g, &y) in row.iter_mut().zip(&mask[b * k..(b + 1) * k]) {
                if y <= 0.0 {
                    *g = 0.0;
                }
            }
        }
    }
}

/// A `rows`×`cols` matrix in a slice, element (i, j) at `data[i·rs + j·cs]`: a
/// row-major matrix ([`Mat::rows`]) or its transpose ([`Mat::t`]) without a copy.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// `data` as a row-major `rows`×`cols` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, read through swapped strides.
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// Whether a `rows`×`cols` matrix with strides `rs`, `cs` lies inside `len` elements
/// (false where the last element's index would overflow).
fn fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs)?.checked_add(r));
    last.is_some_and(|last| last < len)
}

/// `c = a·b + beta·c`, where `c` is the row-major `a.rows`×`b.cols` matrix in `c`. Split
/// over the pool like the dense layer's GEMMs, each element summed over k in the same
/// order whatever the split.
pub fn matmul(a: Mat, b: Mat, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert!(fits(a.data.len(), m, k, a.rs, a.cs) && fits(b.data.len(), k, n, b.rs, b.cs));
    assert_eq!(
        Some(c.len()),
        m.checked_mul(n),
        "matmul output has the wrong length"
    );
    if m * n == 0 {
        return;
    }
    // SAFETY: the views were checked above to lie inside their slices.
    unsafe {
        par_sgemm(
            m,
            k,
            n,
            view(a.data, a.rs, a.cs),
            view(b.data, b.rs, b.cs),
            beta,
            view_mut(c, n, 1),
            threads(),
        )
    };
}

/// Bias gradient: column sums of `dy` (`[m, n]` → `[n]`), summed in row order.
pub fn bias_grad(dy: &[f32], m: usize, n: usize, db: &mut [f32]) {
    assert_eq!(dy.len(), m * n);
    db.fill(0.0);
    for row in dy.chunks_exact(n) {
        for (acc, &g) in db.iter_mut().zip(row) {
            *acc += g;
        }
    }
}

/// The oracle: `c[m, n] = op(a) · op(b)` with plain loops and an f64 accumulator, where
/// `op(a)` is `a` (`[m, k]`) or, with `trans_a`, `aᵀ` of a stored `[k, m]`; same for `b`.
pub fn gemm_naive(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            c[i * n + j] = acc as f32;
        }
    }
    c
}

fn check_lens(inputs: &[(&[f32], usize)], out: &[f32], out_len: usize) {
    for (i, (slice, len)) in inputs.iter().enumerate() {
        assert_eq!(slice.len(), *len, "gemm input {i} has the wrong length");
    }
    assert_eq!(out.len(), out_len, "gemm output has the wrong length");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::gradcheck::assert_matches_central_differences;

    #[test]
    fn forward_matches_hand_computed() {
        // x = [[1, 2], [3, 4]], w = [[1, 0, -1], [2, 1, 0]], bias = [0.5, 0, -10]
        let x = [1.0, 2.0, 3.0, 4.0];
        let w = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        let bias = [0.5, 0.0, -10.0];
        let mut y = [0.0; 6];
        gemm_forward(&x, &w, &bias, 2, 2, 3, false, &mut y);
        assert_eq!(y, [5.5, 2.0, -11.0, 11.5, 4.0, -13.0]);
        gemm_forward(&x, &w, &bias, 2, 2, 3, true, &mut y);
        assert_eq!(y, [5.5, 2.0, 0.0, 11.5, 4.0, 0.0]);
    }

    #[test]
    fn grads_match_hand_computed() {
        let x = [1.0, 2.0, 3.0, 4.0]; // [2, 2]
        let dy = [1.0, -1.0, 0.5, 2.0, 0.0, 1.0]; // [2, 3]
        let mut dw = [0.0; 6];
        gemm_weight_grad(&x, &dy, 2, 2, 3, &mut dw);
        // xᵀ·dy = [[1*1+3*2, 1*-1+3*0, 1*.5+3*1], [2*1+4*2, 2*-1+4*0, 2*.5+4*1]]
        assert_eq!(dw, [7.0, -1.0, 3.5, 10.0, -2.0, 5.0]);
        let w = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0]; // [2, 3]
        let mut dx = [0.0; 4];
        gemm_input_grad(&dy, &w, 2, 2, 3, None, &mut dx);
        // dy·wᵀ: row0 = [1-0-0.5, 2-1+0] ; row1 = [2+0-1, 4+0+0]
        assert_eq!(dx, [0.5, 1.0, 1.0, 4.0]);
        gemm_input_grad(&dy, &w, 2, 2, 3, Some(&[1.0, 0.0, 2.0, -1.0]), &mut dx);
        assert_eq!(dx, [0.5, 0.0, 1.0, 0.0]);
        let mut db = [0.0; 3];
        bias_grad(&dy, 2, 3, &mut db);
        assert_eq!(db, [3.0, -1.0, 1.5]);
    }

    /// L = Σ c ⊙ (x·w + b): dL/dw = xᵀ·c, dL/dx = c·wᵀ, dL/db = colsum(c), against
    /// central differences in f64.
    #[test]
    fn grads_match_finite_differences() {
        let (m, k, n) = (3usize, 4usize, 2usize);
        let x: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let w: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.71).cos()).collect();
        let c: Vec<f64> = (0..m * n).map(|i| (i as f64 * 1.3).sin()).collect();
        let loss = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            let mut total = 0.0;
            for i in 0..m {
                for j in 0..n {
                    let y: f64 = (0..k).map(|p| x[i * k + p] * w[p * n + j]).sum::<f64>() + b[j];
                    total += c[i * n + j] * y;
                }
            }
            total
        };
        let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (mut dw, mut dx, mut db) = (vec![0.0; k * n], vec![0.0; m * k], vec![0.0; n]);
        gemm_weight_grad(&f32s(&x), &f32s(&c), m, k, n, &mut dw);
        gemm_input_grad(&f32s(&c), &f32s(&w), m, k, n, None, &mut dx);
        bias_grad(&f32s(&c), m, n, &mut db);
        let b0 = vec![0.0f64; n];
        assert_matches_central_differences("dw", &dw, 1e-5, |i, d| {
            let mut w2 = w.clone();
            w2[i] += d;
            loss(&x, &w2, &b0)
        });
        assert_matches_central_differences("dx", &dx, 1e-5, |i, d| {
            let mut x2 = x.clone();
            x2[i] += d;
            loss(&x2, &w, &b0)
        });
        assert_matches_central_differences("db", &db, 1e-5, |i, d| {
            let mut b2 = b0.clone();
            b2[i] += d;
            loss(&x, &w, &b2)
        });
    }

    #[test]
    fn fast_forms_match_the_oracle_on_odd_shapes() {
        // n = 10 takes the narrow input-grad path (300 rows: split over threads); n = 40
        // and k = 129 go through matrixmultiply, split over threads by columns
        // (37×129×40) and by rows (300×129×40).
        for (m, k, n) in [
            (37, 129, 10),
            (300, 129, 10),
            (37, 129, 40),
            (300, 129, 40),
            (5, 3, 1),
        ] {
            forms_match_the_oracle(m, k, n);
        }
    }

    fn forms_match_the_oracle(m: usize, k: usize, n: usize) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104_729) % 19) as f32 / 9.0 - 1.0)
            .collect();
        let dy: Vec<f32> = (0..m * n)
            .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
            .collect();
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(p, q)| (p - q).abs() <= 1e-4 * (1.0 + q.abs()))
        };
        let mut y = vec![0.0; m * n];
        gemm_forward(&x, &w, &vec![0.0; n], m, k, n, false, &mut y);
        assert!(close(&y, &gemm_naive(&x, &w, m, k, n, false, false)));
        let mut dw = vec![0.0; k * n];
        gemm_weight_grad(&x, &dy, m, k, n, &mut dw);
        assert!(close(&dw, &gemm_naive(&x, &dy, k, m, n, true, false)));
        let mut dx = vec![0.0; m * k];
        gemm_input_grad(&dy, &w, m, k, n, None, &mut dx);
        let oracle = gemm_naive(&dy, &w, m, n, k, false, true);
        assert!(close(&dx, &oracle), "input grad {m}x{k}x{n}");
        // The fused ReLU mask: zero where the layer's output is <= 0.
        let mask: Vec<f32> = (0..m * k).map(|i| ((i * 13) % 5) as f32 - 2.0).collect();
        gemm_input_grad(&dy, &w, m, k, n, Some(&mask), &mut dx);
        let masked: Vec<f32> = oracle
            .iter()
            .zip(&mask)
            .map(|(&v, &y)| if y > 0.0 { v } else { 0.0 })
            .collect();
        assert!(close(&dx, &masked), "masked input grad {m}x{k}x{n}");
    }
}
