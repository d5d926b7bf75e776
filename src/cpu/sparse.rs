//! BatchNorm and the first dense layer on sparse input: the CPU trainer's fast path.
//!
//! About four in five MNIST pixels are 0, so the first layer's two GEMMs (forward
//! `y·W`, weight gradient `xhatᵀ·δ`, together nine tenths of a step's arithmetic) mostly
//! multiply zeros. BatchNorm makes the normalised input dense, but it is an affine map of
//! each column, so it folds into the dense layer exactly. With `s = 1/sqrt(var + eps)`
//! and the batch mean `mean`, `xhat = s·(x − mean)` and `y = gamma·xhat + beta`, so:
//!
//! - forward: `z_b = y_b·W + bias = Σ_{j: x_bj ≠ 0} (x_bj·coef_j)·W_j + row`, where
//!   `coef_j = gamma_j·s_j` and `row = bias + Σ_j (beta_j − coef_j·mean_j)·W_j`
//!   ([`fold_batchnorm_into_dense`], [`sparse_forward`]);
//! - backward: `G = xhatᵀ·δ` has rows `G_j = s_j·(H_j − mean_j·db)` with `H = xᵀ·δ` and
//!   `db = Σ_b δ_b`, and [`crate::layers::batchnorm::cpu::batchnorm_dense_backward`]'s row step turns
//!   `G` into dW, dgamma and dbeta ([`sparse_first_layer_backward`], all in one pass).
//!
//! Work per sample falls from 2·784·n to about 2·150·n multiply-adds. The dense path
//! (`batchnorm_forward_train`, `gemm_forward`, `gemm_weight_grad`), which the GPU kernels
//! mirror, stays the reference: tests check these functions and whole training steps
//! against it.

use crate::layers::adam::cpu::{adam_run, AdamStep};
use crate::layers::batchnorm::cpu::{dense_backward_row, Affine};
use multiversion::target::selected_target;
use rayon::prelude::*;

/// A u8 image set in compressed sparse rows: for image i, the columns and values of its
/// nonzero pixels are `cols[starts[i]..starts[i + 1]]` and `vals[..]` (columns ascending).
#[derive(Clone)]
pub struct SparseImages {
    pixels: usize,
    starts: Vec<u32>,
    cols: Vec<u16>,
    vals: Vec<u8>,
}

/// Largest fraction of nonzero pixels for which the first layer runs sparse (MNIST:
/// 0.19). Above about a half it saves nothing over the dense GEMMs.
pub const SPARSE_MAX_DENSITY: f64 = 0.5;

impl SparseImages {
    /// `images` (u8, `pixels` each) in sparse rows, when at most [`SPARSE_MAX_DENSITY`]
    /// of their pixels are nonzero and the offsets fit in u32.
    pub fn if_sparse(images: &[u8], pixels: usize) -> Option<Self> {
        (images.len() <= u32::MAX as usize)
            .then(|| SparseImages::from_dense(images, pixels))
            .filter(|sparse| sparse.density() <= SPARSE_MAX_DENSITY)
    }

    /// Compresses `images` (`count × pixels` bytes). `pixels` must fit in a u16.
    pub fn from_dense(images: &[u8], pixels: usize) -> Self {
        assert!(pixels > 0 && pixels <= u16::MAX as usize + 1);
        let count = images.len() / pixels;
        // Blocks of images are compressed in parallel, straight into their share of the
        // final arrays (this runs before the first training step and must stay cheap in
        // both time and peak memory).
        let blocks: Vec<&[u8]> = images[..count * pixels]
            .chunks(COMPRESS_BLOCK * pixels)
            .collect();
        let nonzero: Vec<usize> = blocks
            .par_iter()
            .map(|block| block.iter().filter(|&&p| p != 0).count())
            .collect();
        let total: usize = nonzero.iter().sum();
        assert!(
            total <= u32::MAX as usize,
            "too many nonzero pixels for u32 offsets"
        );
        let mut sparse = SparseImages {
            pixels,
            starts: vec![0; count + 1],
            cols: vec![0; total],
            vals: vec![0; total],
        };
        let mut jobs = Vec::with_capacity(blocks.len());
        let (mut starts, mut cols, mut vals) = (
            &mut sparse.starts[1..],
            &mut sparse.cols[..],
            &mut sparse.vals[..],
        );
        let mut base = 0usize;
        for (block, &nz) in blocks.iter().zip(&nonzero) {
            let (s_part, s_rest) = std::mem::take(&mut starts).split_at_mut(block.len() / pixels);
            let (c_part, c_rest) = std::mem::take(&mut cols).split_at_mut(nz);
            let (v_part, v_rest) = std::mem::take(&mut vals).split_at_mut(nz);
            jobs.push((*block, s_part, c_part, v_part, base));
            (starts, cols, vals, base) = (s_rest, c_rest, v_rest, base + nz);
        }
        jobs.into_par_iter()
            .for_each(|(block, ends, cols, vals, base)| {
                compress_block(block, pixels, base, ends, cols, vals)
            });
        sparse
    }

    /// Fraction of pixels that are nonzero.
    pub fn density(&self) -> f64 {
        let total = (self.starts.len() - 1) * self.pixels;
        self.cols.len() as f64 / total.max(1) as f64
    }

    /// Asks the memory system to start loading the rows of the images `indices` into the
    /// cache ([`prefetch_lines`]), without waiting for them. The trainer calls it for
    /// the next step's batch: each image is a random one of 27 MB of rows, mostly not in
    /// the cache, and the batch transpose would otherwise wait for them one miss at a
    /// time. Each core has its own level-1 and level-2 caches, so the rows are split over
    /// the threads in equal parts, as [`sparse_forward`] splits them: with work stealing,
    /// a thread often (not always) reads the part it asked for.
    pub fn prefetch(&self, indices: &[u32]) {
        indices
            .par_chunks(rows_per_task(indices.len()))
            .for_each(|part| {
                for &i in part {
                    let (cols, vals) = self.row(i);
                    prefetch_lines(cols);
                    prefetch_lines(vals);
                }
            });
    }

    /// Nonzero columns and values of image `i`.
    fn row(&self, i: u32) -> (&[u16], &[u8]) {
        let range = self.starts[i as usize] as usize..self.starts[i as usize + 1] as usize;
        (&self.cols[range.clone()], &self.vals[range])
    }
}

/// Prefetches every 64-byte line that holds part of `data` into every level of the cache
/// (a hint: no effect on results, and none at all off x86-64). The hint for every level
/// (`T0`), not for level 2 and beyond (`T1`): on the Zen 5 machines measured here the
/// batch transpose waited for the rows a `T1` prefetch had asked for as if it had not
/// (step profile, six rounds alternating, ms a step for the transpose: 0.061 → 0.0225 at
/// batch 128 on one thread, 0.032 → 0.013 on two; 0.099 → 0.050 at 512 on two; 0.016 →
/// 0.006 at 32 on one).
#[inline]
fn prefetch_lines<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if !data.is_empty() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // From the line holding the first byte to the one holding the last: stepping 64
        // bytes from an unaligned start would miss the last line of most rows.
        let skew = data.as_ptr() as usize % 64;
        let base = (data.as_ptr() as *const i8).wrapping_sub(skew);
        for offset in (0..skew + std::mem::size_of_val(data)).step_by(64) {
            // SAFETY: a prefetch never faults and reads nothing into the program; the
            // address is in a line that holds part of `data` anyway. SSE, which it
            // needs, is part of x86-64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// Images per block that [`SparseImages::from_dense`] compresses on one thread.
const COMPRESS_BLOCK: usize = 2048;

/// Compresses the whole images of `block` into `cols`/`vals` (exactly its nonzero
/// pixels), writing each image's end offset (plus `base`) to `ends`.
fn compress_block(
    block: &[u8],
    pixels: usize,
    base: usize,
    ends: &mut [u32],
    cols: &mut [u16],
    vals: &mut [u8],
) {
    let mut at = 0usize;
    for (image, end) in block.chunks_exact(pixels).zip(ends) {
        // 32 pixels at a time: a bit mask of the nonzero ones (the compiler turns the
        // loop into a SIMD compare and move-mask), then one store per set bit.
        for (c, chunk) in image.chunks(32).enumerate() {
            let mut mask = 0u32;
            for (i, &v) in chunk.iter().enumerate() {
                mask |= ((v != 0) as u32) << i;
            }
            while mask != 0 {
                let i = mask.trailing_zeros() as usize;
                cols[at] = (c * 32 + i) as u16;
                vals[at] = chunk[i];
                at += 1;
                mask &= mask - 1;
            }
        }
        *end = (base + at) as u32;
    }
}

/// One batch's pixels by column: the transpose of its rows in [`SparseImages`], so the
/// batch statistics and `xᵀ·δ` can run one pixel column at a time (each column's sum
/// then stays in registers instead of being scattered through memory). The batch is
/// transposed in groups of [`TILE`] samples (fewer where threads outnumber tiles: see
/// [`group_size`]; not for a batch transposed a step ahead, off the critical path: see
/// [`ColumnBatch::fill_in_tiles`]), each on its own: a group's entries (about 38 KB for
/// MNIST) stay in the level-1 cache while they are scattered into columns, and the
/// backward pass reads them a group at a time anyway.
#[derive(Default)]
pub struct ColumnBatch {
    pixels: usize,
    /// Group g's entries of column j: `bases[g] + starts[g·(pixels + 1) + j..][..2]`.
    starts: Vec<u32>,
    bases: Vec<usize>,
    /// `batch row << 8 | pixel value`, rows ascending within a group's column.
    entries: Vec<u32>,
    scale: f32,
}

impl ColumnBatch {
    /// Transposes the images `indices` of `images` (pixels to be scaled by `scale`), in
    /// groups that give each thread a share of the transpose ([`group_size`]).
    pub fn fill(&mut self, images: &SparseImages, indices: &[u32], scale: f32) {
        self.fill_in_groups(images, indices, scale, group_size(indices.len()));
    }

    /// [`Self::fill`] in whole tiles of [`TILE`] samples, whatever the thread count: for a
    /// transpose off the step's critical path, where giving each thread a share matters
    /// less than the backward pass visiting each column in fewer groups.
    pub fn fill_in_tiles(&mut self, images: &SparseImages, indices: &[u32], scale: f32) {
        self.fill_in_groups(images, indices, scale, TILE);
    }

    /// [`Self::fill`] in groups of `group_len` samples (the last one shorter).
    fn fill_in_groups(
        &mut self,
        images: &SparseImages,
        indices: &[u32],
        scale: f32,
        group_len: usize,
    ) {
        assert!(indices.len() <= 1 << 24, "batch rows must fit in 24 bits");
        let pixels = images.pixels;
        (self.pixels, self.scale) = (pixels, scale);
        let groups: Vec<&[u32]> = indices.chunks(group_len).collect();
        self.bases.clear();
        let mut total = 0;
        for group in &groups {
            self.bases.push(total);
            total += group.iter().map(|&i| images.row(i).0.len()).sum::<usize>();
        }
        self.entries.resize(total, 0);
        self.starts.resize(groups.len() * (pixels + 1), 0);
        let mut jobs = Vec::with_capacity(groups.len());
        let mut rest = &mut self.entries[..];
        for (g, (group, starts)) in groups
            .iter()
            .zip(self.starts.chunks_mut(pixels + 1))
            .enumerate()
        {
            let entries = self.bases.get(g + 1).unwrap_or(&total) - self.bases[g];
            let (out, tail) = std::mem::take(&mut rest).split_at_mut(entries);
            jobs.push((g * group_len, *group, starts, out));
            rest = tail;
        }
        let job = |(first, group, starts, out): (usize, &[u32], &mut [u32], &mut [u32])| {
            transpose_group(images, group, first, starts, out)
        };
        if indices.len() >= PARALLEL_MIN_ROWS {
            jobs.into_par_iter().for_each(job);
        } else {
            jobs.into_iter().for_each(job);
        }
    }

    fn pixels(&self) -> usize {
        self.pixels
    }

    fn groups(&self) -> usize {
        self.bases.len()
    }

    /// Entries of column j in group g.
    fn column(&self, g: usize, j: usize) -> &[u32] {
        let at = g * (self.pixels + 1) + j;
        let base = self.bases[g];
        &self.entries[base + self.starts[at] as usize..base + self.starts[at + 1] as usize]
    }

    /// Entries in the columns before column `j`, over all groups.
    fn entries_before(&self, j: usize) -> usize {
        let stride = self.pixels + 1;
        (0..self.groups())
            .map(|g| self.starts[g * stride + j] as usize)
            .sum()
    }

    /// Bounds of `tasks` runs of columns, `0 = bounds[0] ≤ … ≤ bounds[tasks] = pixels`,
    /// of about equal cost, where a column costs its entries plus `column_cost`. MNIST's
    /// ink is not spread evenly (the lower half of the image holds 52.6% of the training
    /// set's nonzero pixels), so equal runs of columns leave one thread waiting for the
    /// other at every per-column pass.
    fn balanced_columns(&self, tasks: usize, column_cost: usize) -> Vec<usize> {
        let pixels = self.pixels;
        let cost = |j: usize| self.entries_before(j) + column_cost * j;
        let total = cost(pixels);
        let mut bounds = vec![0];
        for t in 1..tasks {
            let target = total * t / tasks;
            // The first column whose prefix cost reaches the target (cost is monotone).
            let (mut lo, mut hi) = (*bounds.last().unwrap_or(&0), pixels);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if cost(mid) < target {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            bounds.push(lo);
        }
        bounds.push(pixels);
        bounds
    }

    /// Batch row and scaled pixel value of an entry.
    #[inline(always)]
    fn decode(&self, entry: u32) -> (usize, f32) {
        ((entry >> 8) as usize, (entry & 255) as f32 * self.scale)
    }
}

/// Transposes one group of images (batch rows `first..`) into `out`, with each column's
/// start (relative to `out`) in `starts` (`pixels + 1` long): a count, then a placement.
fn transpose_group(
    images: &SparseImages,
    indices: &[u32],
    first: usize,
    starts: &mut [u32],
    out: &mut [u32],
) {
    // The rows were asked for a step ahead (`SparseImages::prefetch`), but the step's
    // own arrays push many of them out of the cache again; asking for the group's rows
    // once more just before reading them overlaps the misses that remain.
    // (Batch 512, one thread: the transpose went from 0.25 to 0.11 ms when the whole
    // batch was asked for first. Asked for here instead, by the core that reads them,
    // in the same task, the step took 9–11% less on two threads, the same on one.)
    for &i in indices {
        let (cols, vals) = images.row(i);
        prefetch_lines(cols);
        prefetch_lines(vals);
    }
    starts.fill(0);
    for &i in indices {
        for &col in images.row(i).0 {
            starts[col as usize + 1] += 1;
        }
    }
    for j in 1..starts.len() {
        starts[j] += starts[j - 1];
    }
    let mut cursor = starts[..starts.len() - 1].to_vec();
    for (b, &i) in indices.iter().enumerate() {
        let (cols, vals) = images.row(i);
        let row = ((first + b) as u32) << 8;
        for (&col, &val) in cols.iter().zip(vals) {
            let slot = &mut cursor[col as usize];
            out[*slot as usize] = row | val as u32;
            *slot += 1;
        }
    }
}

/// Batch mean and biased batch variance of every pixel column of a `batch`-image
/// [`ColumnBatch`]. Sums run in f64, so `E[x²] − mean²` loses nothing to cancellation
/// at these magnitudes.
pub fn batch_stats(columns: &ColumnBatch, batch: usize, mean: &mut [f32], var: &mut [f32]) {
    assert!(mean.len() == columns.pixels() && var.len() == columns.pixels());
    let count = batch as f64;
    let tasks = rayon::current_num_threads();
    let bounds = columns.balanced_columns(tasks, STATS_COLUMN_COST);
    let parts = split_at_bounds(mean, &bounds, 1);
    let parts: Vec<_> = parts
        .into_iter()
        .zip(split_at_bounds(var, &bounds, 1))
        .zip(&bounds)
        .collect();
    parts.into_par_iter().for_each(|((mean, var), &first)| {
        for (r, (m_out, v_out)) in mean.iter_mut().zip(var).enumerate() {
            let j = first + r;
            let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
            for g in 0..columns.groups() {
                for &e in columns.column(g, j) {
                    let x = columns.decode(e).1 as f64;
                    (sum, sum_sq) = (sum + x, sum_sq + x * x);
                }
            }
            let m = sum / count;
            *m_out = m as f32;
            *v_out = (sum_sq / count - m * m).max(0.0) as f32;
        }
    });
}

/// What a column costs beyond its entries, in entries (for
/// [`ColumnBatch::balanced_columns`]). Rough weights: an entry is one pass over a row of
/// n values (n multiply-adds); [`batch_stats`] finishes a column with a few loads and two
/// divisions; [`sparse_first_layer_backward`] finishes its row of n values with a few
/// passes (`G_j`, dW, the dgamma and dbeta sums), and Adam's update adds about ten
/// operations a value, a square root and a division among them. The step profile gave
/// the same times with these, with 0, and with 50 and 100: what matters is splitting the
/// entries evenly.
const STATS_COLUMN_COST: usize = 4;
const BACKWARD_COLUMN_COST: usize = 16;
const BACKWARD_ADAM_COLUMN_COST: usize = 48;

/// `data` cut at `bounds` (as [`ColumnBatch::balanced_columns`] gives them), in units of
/// `unit` values: part t is `data[bounds[t]·unit..bounds[t + 1]·unit]`.
fn split_at_bounds<'a, T>(
    mut data: &'a mut [T],
    bounds: &[usize],
    unit: usize,
) -> Vec<&'a mut [T]> {
    // A longer `data` would lose its tail without a word.
    assert_eq!(data.len(), bounds.last().map_or(0, |&end| end * unit));
    let mut parts = Vec::with_capacity(bounds.len().saturating_sub(1));
    for run in bounds.windows(2) {
        let (part, rest) = std::mem::take(&mut data).split_at_mut((run[1] - run[0]) * unit);
        parts.push(part);
        data = rest;
    }
    parts
}

/// The BatchNorm before the first dense layer, as the sparse path reads it for a batch
/// (in training) or for inference.
#[derive(Clone, Copy)]
pub struct FirstLayer<'a> {
    /// The per-feature mean and 1/sqrt(var + eps), `xhat = (x − mean)·inv_std`: the
    /// batch's in training, the moving statistics' for inference.
    pub mean: &'a [f32],
    pub inv_std: &'a [f32],
    /// BatchNorm's γ and β.
    pub params: Affine<&'a [f32]>,
}

/// Folds `layer`'s BatchNorm into the dense layer of kernel `w` (`[features, n]`) and bias
/// `bias` (`[n]`): fills `coef` (`[features]`) and `row` (`[n]`) so that the layer's
/// output is `row + Σ_j x_j·coef_j·W_j`.
pub fn fold_batchnorm_into_dense(
    layer: FirstLayer,
    (w, bias): (&[f32], &[f32]),
    coef: &mut [f32],
    row: &mut [f32],
) {
    fold_coefficients(layer, coef);
    fold_rows(layer.mean, layer.params.beta, coef, w, bias, row);
}

/// The per-pixel coefficients of the folded layer, `coef_j = gamma_j·inv_std_j`.
fn fold_coefficients(layer: FirstLayer, coef: &mut [f32]) {
    let (gamma, inv_std) = (layer.params.gamma, layer.inv_std);
    for j in 0..coef.len() {
        coef[j] = gamma[j] * inv_std[j];
    }
}

/// `row = bias + Σ_j (beta_j − coef_j·mean_j)·W_j`, on one thread. On AVX-512 a row of
/// up to 128 columns stays in registers over one pass of W; split in two column halves
/// over two threads, the fold had taken longer on two threads than on one (0.006 against
/// 0.004 ms a step on an AMD EPYC; measured on AVX-512 only: with AVX2 the two halves now
/// run one after the other). In training each task of the forward folds for itself
/// ([`fold_and_forward`]).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn fold_rows(mean: &[f32], beta: &[f32], coef: &[f32], w: &[f32], bias: &[f32], row: &mut [f32]) {
    let n = row.len();
    let terms = || (0..coef.len()).map(|j| (beta[j] - coef[j] * mean[j], j * n));
    const WIDE: bool = has_avx512(selected_target!());
    if WIDE {
        weighted_sum::<WIDE_BLOCK, _>(row, bias, w, terms);
    } else {
        weighted_sum::<BLOCK, _>(row, bias, w, terms);
    }
}

/// Samples per task below which [`sparse_forward`] stays on one thread (and batches
/// below which [`ColumnBatch::fill`] does): 16, as the trainer's smallest batch that
/// splits, now that the workers stay awake between splits (64 before).
const PARALLEL_MIN_ROWS: usize = 16;

/// Samples per task of a batch of `rows`: an equal part for each thread, but at least
/// [`PARALLEL_MIN_ROWS`].
fn rows_per_task(rows: usize) -> usize {
    PARALLEL_MIN_ROWS.max(rows.div_ceil(rayon::current_num_threads()))
}
/// Nonzero pixels in a batch below which [`sparse_first_layer_backward`] stays on one
/// thread (MNIST: about 150 per image, so about 16 images).
const PARALLEL_MIN_ENTRIES: usize = 16 * 150;

/// Tasks [`sparse_first_layer_backward`] splits into for the batch `columns` on the
/// current pool. Below about 16 samples' worth of nonzero pixels the pass stays on one
/// thread. (Before the workers were kept awake between splits, the split cost more than
/// it saved at batch 32: 0.071 against 0.058 ms per step.)
pub fn backward_tasks(columns: &ColumnBatch) -> usize {
    if columns.entries.len() >= PARALLEL_MIN_ENTRIES {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// The first dense layer with BatchNorm folded in ([`fold_batchnorm_into_dense`]): the
/// per-pixel coefficients `coef`, the kernel `w` (`[pixels, n]`), the folded bias `row`
/// (`[n]`), and whether a ReLU follows.
#[derive(Clone, Copy)]
pub struct FoldedLayer<'a> {
    pub coef: &'a [f32],
    pub w: &'a [f32],
    pub row: &'a [f32],
    pub relu: bool,
}

/// Forward of the folded layer on the images `indices` (pixels times `scale`):
/// `z_b = row + Σ_j x_bj·coef_j·W_j` over the nonzero pixels of sample b, then ReLU when
/// the layer has one. `z: [batch, n]`.
pub fn sparse_forward(
    images: &SparseImages,
    (indices, scale): (&[u32], f32),
    layer: FoldedLayer,
    z: &mut [f32],
) {
    for_each_forward_task(indices, layer.row.len(), z, |part, z_part| {
        forward_part(images, (part, scale), &layer, z_part)
    });
}

/// Runs `task` on each share of the batch `indices` and its rows of `z` (`n` values a
/// sample) that the forward splits over the threads ([`rows_per_task`]).
fn for_each_forward_task(
    indices: &[u32],
    n: usize,
    z: &mut [f32],
    task: impl Fn(&[u32], &mut [f32]) + Sync + Send,
) {
    assert_eq!(z.len(), indices.len() * n);
    let rows_per_task = rows_per_task(indices.len());
    z.par_chunks_mut(rows_per_task * n)
        .zip(indices.par_chunks(rows_per_task))
        .for_each(|(z_part, part)| task(part, z_part));
}

/// The folded layer's forward on the images `part`, one after the other, into `z_part`.
fn forward_part(
    images: &SparseImages,
    (part, scale): (&[u32], f32),
    layer: &FoldedLayer,
    z_part: &mut [f32],
) {
    for (z_b, &i) in z_part.chunks_exact_mut(layer.row.len()).zip(part) {
        forward_one(images.row(i), scale, layer, z_b);
    }
}

/// [`fold_batchnorm_into_dense`] and then [`sparse_forward`], in one parallel pass, the
/// training step's: the layer `w` (`[features, n]`) and `bias` (`[n]`) with `layer`'s
/// BatchNorm folded in, on the images `indices` (pixels times `scale`), into `z`
/// (`[batch, n]`), ReLU after when `relu`. `coef` (`[features]`) is filled first; then
/// each task of the forward folds the layer's row for itself before its samples. Every
/// fold is the same sum in the same order, so every task's row, and the result, has the
/// same bits as the two calls.
///
/// Why each task folds: folded once, on one thread, the fold made the other threads wait,
/// and on two threads it took about twice as long as on one (0.011 against 0.006 ms a
/// step at batch 128 on an Intel Xeon), since half of the kernel's rows had last been
/// written by the other core's Adam. Each task's own fold still reads those rows, but the
/// tasks fold at the same time, and no thread waits. Measured on two threads
/// (whole epochs, the median of four or six runs alternating, Intel Xeon): batch 32
/// 0.2216 → 0.2134 s, 128 0.1118 → 0.1088, 512 0.0856 → 0.0838; one thread unchanged.
pub fn fold_and_forward(
    images: &SparseImages,
    (indices, scale): (&[u32], f32),
    layer: FirstLayer,
    (w, bias, relu): (&[f32], &[f32], bool),
    coef: &mut [f32],
    z: &mut [f32],
) {
    fold_coefficients(layer, coef);
    let (coef, mean, beta) = (&*coef, layer.mean, layer.params.beta);
    for_each_forward_task(indices, bias.len(), z, |part, z_part| {
        // A few hundred bytes a task and step: nothing beside the fold's 400 KB read.
        let mut row = vec![0.0; bias.len()];
        fold_rows(mean, beta, coef, w, bias, &mut row);
        let folded = FoldedLayer {
            coef,
            w,
            row: &row,
            relu,
        };
        forward_part(images, (part, scale), &folded, z_part);
    });
}

/// Samples per group of a [`ColumnBatch`] (at most), and so per tile in
/// [`sparse_first_layer_backward`]: 64 rows of δ (32 KB at n = 128) stay in the level-1
/// cache while every pixel column adds its entries from them.
const TILE: usize = 64;
/// The smallest group [`group_size`] makes.
const MIN_GROUP: usize = 16;

/// Samples per group of a batch of `rows`: [`TILE`], or fewer where the pool has more
/// threads than a batch has tiles (a group is a task of the transpose), down to
/// [`MIN_GROUP`]. Every sum runs over the groups in batch order, so the size changes no
/// result. At batch 32 on two threads the transpose becomes two tasks of 16 (0.021 →
/// 0.012 ms a step in the step profile, against 0.004 ms more in the backward, which
/// then visits each column twice); on 16 threads, batch 512 has 16 tasks instead of 8.
fn group_size(rows: usize) -> usize {
    let per_thread = rows.div_ceil(rayon::current_num_threads());
    per_thread.clamp(MIN_GROUP, TILE)
}

/// Whether the version a multiversioned function runs (`selected_target!()`) has
/// AVX-512's registers. "avx512f" names an x86 feature: asked on another architecture
/// (wasm32 in a browser) `supports_feature_str` panics, so it is asked on x86-64 only.
/// Callers ask in a `const`, so that it is answered when compiling: asked per sample,
/// the lookup of the feature by name took 1.2% of a batch-32 run's CPU time.
const fn has_avx512(target: multiversion::target::Target) -> bool {
    cfg!(target_arch = "x86_64") && target.supports_feature_str("avx512f")
}

/// Output columns per register block: 8 AVX vectors, kept in registers while the
/// nonzero pixels stream past (n = 128 makes two blocks).
const BLOCK: usize = 64;
/// The same in AVX-512's 8 vectors: n = 128 in one block, so each term's scalar work
/// (decoding the pixel, finding the row) is done once instead of twice.
const WIDE_BLOCK: usize = 128;

/// One sample of [`sparse_forward`], its nonzero pixels' columns and values:
/// `z = row + Σ (val·scale·coef_col)·W_col`, then ReLU when the layer has one. (Tiling
/// W's rows for the level-1 cache, as the backward pass tiles δ, made this slower: the
/// per-tile bookkeeping cost more than the level-2 reads it saved.)
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
fn forward_one((cols, vals): (&[u16], &[u8]), scale: f32, layer: &FoldedLayer, z: &mut [f32]) {
    let FoldedLayer { coef, w, row, relu } = *layer;
    let n = row.len();
    let terms = || {
        cols.iter()
            .zip(vals)
            .map(|(&col, &val)| (val as f32 * scale * coef[col as usize], col as usize * n))
    };
    const WIDE: bool = has_avx512(selected_target!());
    if WIDE {
        weighted_sum::<WIDE_BLOCK, _>(z, row, w, terms);
    } else {
        weighted_sum::<BLOCK, _>(z, row, w, terms);
    }
    if relu {
        z.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

/// The first dense layer's kernel as [`sparse_first_layer_backward`] gets it.
pub enum Kernel<'a> {
    /// Read only: the pass computes the gradients.
    Read(&'a [f32]),
    /// Also updated: each row by Adam as soon as its gradient is done, while the row and
    /// its gradient are in cache and on the thread that computed it, instead of in a
    /// sweep over every parameter after the pass (the CPU trainer's `adam_in_backward`
    /// fusion; the sweep after the whole pass, done per task, measured slower).
    Update(KernelAdam<'a>),
}

/// The kernel, its Adam moments (the same layout) and the step's constants.
pub struct KernelAdam<'a> {
    pub w: &'a mut [f32],
    pub m: &'a mut [f32],
    pub v: &'a mut [f32],
    pub step: AdamStep,
}

impl<'a> Kernel<'a> {
    fn len(&self) -> usize {
        match self {
            Kernel::Read(w) => w.len(),
            Kernel::Update(adam) => adam.w.len(),
        }
    }

    /// The kernel cut at `bounds` into parts of rows of `n` values (see
    /// [`split_at_bounds`]), in order.
    fn into_parts(self, bounds: &[usize], n: usize) -> Vec<Kernel<'a>> {
        match self {
            Kernel::Read(w) => {
                let w: &'a [f32] = w;
                bounds
                    .windows(2)
                    .map(|run| Kernel::Read(&w[run[0] * n..run[1] * n]))
                    .collect()
            }
            Kernel::Update(KernelAdam { w, m, v, step }) => {
                // A shorter moment would drop the rows past it from the zip below.
                assert!(m.len() == w.len() && v.len() == w.len());
                split_at_bounds(w, bounds, n)
                    .into_iter()
                    .zip(split_at_bounds(m, bounds, n))
                    .zip(split_at_bounds(v, bounds, n))
                    .map(|((w, m), v)| Kernel::Update(KernelAdam { w, m, v, step }))
                    .collect()
            }
        }
    }

    /// Row `r` of `n` values.
    #[inline(always)]
    fn row(&self, r: usize, n: usize) -> &[f32] {
        let w = match self {
            Kernel::Read(w) => w,
            Kernel::Update(adam) => &*adam.w,
        };
        &w[r * n..(r + 1) * n]
    }

    /// Adam's update of row `r` from its gradient `grad`, when the kernel is to be
    /// updated.
    #[inline(always)]
    fn update_row(&mut self, r: usize, grad: &[f32]) {
        if let Kernel::Update(KernelAdam { w, m, v, step }) = self {
            let rows = r * grad.len()..(r + 1) * grad.len();
            adam_run(
                &mut w[rows.clone()],
                grad,
                &mut m[rows.clone()],
                &mut v[rows],
                *step,
            );
        }
    }
}

/// The rest of the backward pass through layer 0 and BatchNorm, in one parallel pass over
/// the rows of `kernel` (`[pixels, n]`). For each pixel j: `H_j = Σ_b x_bj·δ_b` over
/// column j's entries in batch order, `G_j = inv_std_j·(H_j − mean_j·db)` (so
/// `G = xhatᵀ·δ`), then
/// [`batchnorm_dense_backward`](crate::layers::batchnorm::cpu::batchnorm_dense_backward)'s
/// row step: `dgamma_j`, `dbeta_j` and `dW_j = gamma_j·G_j + beta_j·db` into `grad_w`, and, for
/// [`Kernel::Update`], Adam's update of `W_j`. Rows are independent, so each is computed
/// the same whatever the split; fused, the 784×n arrays are swept once per step instead
/// of four times.
pub fn sparse_first_layer_backward(
    columns: &ColumnBatch,
    (delta, db): (&[f32], &[f32]),
    (layer, kernel): (FirstLayer, Kernel),
    grad_w: &mut [f32],
    grads: Affine<&mut [f32]>,
) {
    let (n, pixels) = (db.len(), columns.pixels());
    assert!(grad_w.len() == pixels * n && kernel.len() == grad_w.len());
    assert!(grads.gamma.len() == pixels && grads.beta.len() == pixels);
    let column_cost = match kernel {
        Kernel::Read(_) => BACKWARD_COLUMN_COST,
        Kernel::Update(_) => BACKWARD_ADAM_COLUMN_COST,
    };
    let bounds = columns.balanced_columns(backward_tasks(columns), column_cost);
    let parts: Vec<_> = split_at_bounds(grad_w, &bounds, n)
        .into_iter()
        .zip(split_at_bounds(grads.gamma, &bounds, 1))
        .zip(split_at_bounds(grads.beta, &bounds, 1))
        .zip(kernel.into_parts(&bounds, n))
        .zip(&bounds)
        .collect();
    parts
        .into_par_iter()
        .for_each(|((((grad_part, gamma), beta), kernel), &first)| {
            let grads = Affine { gamma, beta };
            first_layer_rows(
                columns,
                (delta, db),
                (first, &layer, kernel),
                grad_part,
                grads,
            );
        });
}

#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx2+fma",
    "x86_64+avx2+fma",
    "x86_64+avx"
))]
/// One task's share of [`sparse_first_layer_backward`]: the rows of `grad_w` and `grads`
/// from feature `first`, with `kernel` holding the same rows of the kernel.
fn first_layer_rows(
    columns: &ColumnBatch,
    (delta, db): (&[f32], &[f32]),
    (first, layer, mut kernel): (usize, &FirstLayer, Kernel),
    grad_w: &mut [f32],
    grads: Affine<&mut [f32]>,
) {
    let n = db.len();
    let (mean, inv_std) = (layer.mean, layer.inv_std);
    const WIDE: bool = has_avx512(selected_target!());
    column_sums(columns, delta, (n, WIDE), first, grad_w);
    for (r, g_row) in grad_w.chunks_exact_mut(n).enumerate() {
        let j = first + r;
        let (m, s) = (mean[j], inv_std[j]);
        for (g, &d) in g_row.iter_mut().zip(db) {
            *g = s * (*g - m * d);
        }
        let (gamma, beta) = (layer.params.gamma[j], layer.params.beta[j]);
        (grads.gamma[r], grads.beta[r]) =
            dense_backward_row(g_row, kernel.row(r, n), gamma, beta, db);
        kernel.update_row(r, g_row);
    }
}

/// `H_j = Σ_b x_bj·δ_b` into the rows of `h` for the pixel columns `first..`, one group
/// of [`TILE`] samples (of δ's rows) at a time: each column adds its entries from the
/// group, in batch order, so every row gets the same sum in the same order as untiled.
/// With `wide` (AVX-512's registers), a column of at least [`WIDE_MIN_ENTRIES`] entries
/// is summed in one [`WIDE_BLOCK`] instead of two [`BLOCK`]s: the same bits.
#[inline(always)]
fn column_sums(
    columns: &ColumnBatch,
    delta: &[f32],
    (n, wide): (usize, bool),
    first: usize,
    h: &mut [f32],
) {
    for g in 0..columns.groups() {
        for (r, h_row) in h.chunks_exact_mut(n).enumerate() {
            // Zeroed as each row is first visited, while it is about to be summed into,
            // rather than in a pass of its own over the whole array.
            if g == 0 {
                h_row.fill(0.0);
            }
            let column = columns.column(g, first + r);
            if wide && column.len() >= WIDE_MIN_ENTRIES {
                weight_grad_row::<WIDE_BLOCK>(columns, column, delta, h_row);
            } else if !column.is_empty() {
                weight_grad_row::<BLOCK>(columns, column, delta, h_row);
            }
        }
    }
}

/// Entries of a column from which [`column_sums`] takes the whole row in one block, each
/// entry's decoding and δ row lookup done once instead of twice. Fewer entries keep the
/// narrow blocks: measured per column threshold 4, 8, 16 on the step profile, the
/// first-layer backward took 0.085, 0.088, 0.088 ms at batch 128 on one thread (0.094
/// with narrow blocks only) and 0.268, 0.272, 0.275 ms at batch 512 (0.292).
const WIDE_MIN_ENTRIES: usize = 4;

/// `h_row += Σ x·δ_b` over entries of one pixel column.
#[inline(always)]
fn weight_grad_row<const B: usize>(
    columns: &ColumnBatch,
    entries: &[u32],
    delta: &[f32],
    h_row: &mut [f32],
) {
    let n = h_row.len();
    let terms = || {
        entries.iter().map(|&e| {
            let (b, x) = columns.decode(e);
            (x, b * n)
        })
    };
    accumulate::<B, _>(h_row, delta, terms);
}

/// `out[i] = init[i] + Σ_t a_t·src[off_t + i]` over the terms `(a_t, off_t)`, summed in
/// order (see [`accumulate`]).
#[inline(always)]
fn weighted_sum<const B: usize, I: Iterator<Item = (f32, usize)>>(
    out: &mut [f32],
    init: &[f32],
    src: &[f32],
    terms: impl Fn() -> I,
) {
    out.copy_from_slice(init);
    accumulate::<B, I>(out, src, terms);
}

/// `out[i] += Σ_t a_t·src[off_t + i]` over the terms `(a_t, off_t)`, summed in order.
/// Each block of `B` outputs stays in registers while the terms stream past (the
/// scattered rows they name are read once per block); a narrower tail is summed in
/// memory. Every output is the same sum in the same order whatever `B` and the SIMD
/// width, so the result is too. Inlined into its multiversioned callers, which pick `B`
/// for their registers.
#[inline(always)]
fn accumulate<const B: usize, I: Iterator<Item = (f32, usize)>>(
    out: &mut [f32],
    src: &[f32],
    terms: impl Fn() -> I,
) {
    let width = out.len();
    let mut start = 0;
    while start + B <= width {
        let mut acc: [f32; B] = out[start..start + B].try_into().unwrap();
        for (a, off) in terms() {
            let x: &[f32; B] = src[off + start..off + start + B].try_into().unwrap();
            for i in 0..B {
                acc[i] += a * x[i];
            }
        }
        out[start..start + B].copy_from_slice(&acc);
        start += B;
    }
    if start < width {
        let tail = &mut out[start..];
        for (a, off) in terms() {
            axpy(a, &src[off + start..off + width], tail);
        }
    }
}

/// `y += a·x`.
#[inline(always)]
fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::batchnorm::cpu::{batchnorm_batch_update, Moments};
    use crate::model::Hyper;

    #[test]
    fn compresses_rows_and_measures_density() {
        let images = [0u8, 3, 0, 0, /* */ 0, 0, 0, 0, /* */ 7, 0, 0, 9];
        let s = SparseImages::from_dense(&images, 4);
        assert_eq!(s.row(0), (&[1u16][..], &[3u8][..]));
        assert_eq!(s.row(1), (&[][..], &[][..]));
        assert_eq!(s.row(2), (&[0u16, 3][..], &[7u8, 9][..]));
        assert!((s.density() - 3.0 / 12.0).abs() < 1e-12);
    }

    /// Several parallel blocks, full and empty images, against a plain filter.
    #[test]
    fn compression_across_blocks_matches_a_plain_filter() {
        let pixels = 9;
        let count = 2 * COMPRESS_BLOCK + 37;
        let mut images = sample(count, pixels);
        images[5 * pixels..6 * pixels].fill(200); // full
        images[COMPRESS_BLOCK * pixels..(COMPRESS_BLOCK + 1) * pixels].fill(0); // empty
        images[(count - 1) * pixels..].fill(1); // full, last
        let s = SparseImages::from_dense(&images, pixels);
        for (i, image) in images.chunks_exact(pixels).enumerate() {
            let (cols, vals): (Vec<u16>, Vec<u8>) = image
                .iter()
                .enumerate()
                .filter(|(_, &v)| v != 0)
                .map(|(c, &v)| (c as u16, v))
                .unzip();
            assert_eq!(s.row(i as u32), (&cols[..], &vals[..]), "image {i}");
        }
    }

    /// A small batch of sparse "images" (about a third nonzero) with awkward sizes.
    fn sample(count: usize, pixels: usize) -> Vec<u8> {
        (0..count * pixels)
            .map(|i| {
                if (i * 7919) % 3 == 0 {
                    (i * 31 % 255) as u8 + 1
                } else {
                    0
                }
            })
            .collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Statistics, the folded forward and the weight gradient against the dense
    /// reference: gather, `batchnorm_forward_train`, `gemm_forward`, `gemm_weight_grad`;
    /// on a small batch and on one of more than one group of [`TILE`] samples.
    #[test]
    fn folded_layer_matches_dense_reference() {
        let short: Vec<u32> = vec![7, 3, 39, 0, 12, 12, 25, 31, 18];
        let long: Vec<u32> = (0..150).map(|i| (i * 7 % 40) as u32).collect();
        for (indices, n) in [(&short, 70), (&short, 128), (&short, 5), (&long, 128)] {
            check_folded_layer(indices, n);
        }
    }

    /// Groups of 64, 38 and 16 samples (pools of 1, 4 and 16 threads on a batch of 150)
    /// give the same bits: every sum runs over the groups in batch order.
    #[test]
    fn the_group_size_changes_no_bit() {
        let indices: Vec<u32> = (0..150).map(|i| (i * 7 % 40) as u32).collect();
        let case = Case::new(&indices, 128);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let run = |(threads, group): (usize, usize)| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
            let pool = pool.expect("a pool");
            assert_eq!(pool.install(|| group_size(150)), group);
            let out = pool.install(|| sparse_first_layer(&case));
            [out.moving_var, out.z, out.dw, out.dgamma, out.dbeta].map(|v| bits(&v))
        };
        let one = run((1, 64));
        assert!(run((4, 38)) == one && run((16, 16)) == one);
    }

    /// The training step's fold and forward, each task folding the row for itself, gives
    /// the bits of one fold followed by the forward, on pools of 1, 2 and 3 threads (one,
    /// two and three tasks at batch 150).
    #[test]
    fn each_task_folding_for_itself_changes_no_bit() {
        let indices: Vec<u32> = (0..150).map(|i| (i * 7 % 40) as u32).collect();
        let (n, case) = (128, Case::new(&indices, 128));
        let pixels = case.pixels;
        let sparse = SparseImages::from_dense(&case.images, pixels);
        let mean: Vec<f32> = (0..pixels).map(|j| 0.1 + j as f32 * 1e-3).collect();
        let inv_std: Vec<f32> = (0..pixels).map(|j| 1.0 + j as f32 * 1e-2).collect();
        let first = FirstLayer {
            mean: &mean,
            inv_std: &inv_std,
            params: case.params(),
        };
        let (mut coef, mut row) = (vec![0.0; pixels], vec![0.0; n]);
        fold_batchnorm_into_dense(first, (&case.w, &case.bias), &mut coef, &mut row);
        let layer = FoldedLayer {
            coef: &coef,
            w: &case.w,
            row: &row,
            relu: true,
        };
        let mut expected = vec![0.0; indices.len() * n];
        sparse_forward(&sparse, (&indices, case.scale), layer, &mut expected);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
            let (mut own_coef, mut z) = (vec![0.0; pixels], vec![0.0; expected.len()]);
            pool.expect("a pool").install(|| {
                let dense = (&case.w[..], &case.bias[..], true);
                let samples = (&indices[..], case.scale);
                fold_and_forward(&sparse, samples, first, dense, &mut own_coef, &mut z)
            });
            assert!(bits(&own_coef) == bits(&coef), "{threads} threads: coef");
            assert!(bits(&z) == bits(&expected), "{threads} threads: forward");
        }
    }

    fn check_folded_layer(indices: &[u32], n: usize) {
        let case = Case::new(indices, n);
        let dense = dense_first_layer(&case);
        let sparse = sparse_first_layer(&case);
        close(&sparse.moving_mean, &dense.moving_mean, 1e-6, "moving mean");
        close(&sparse.moving_var, &dense.moving_var, 1e-5, "moving var");
        close(&sparse.inv_std, &dense.inv_std, 1e-4, "inv_std");
        close(&sparse.z, &dense.z, 1e-4, "forward");
        close(&sparse.dw, &dense.dw, 1e-4, "dW");
        close(&sparse.dgamma, &dense.dgamma, 1e-4, "dgamma");
        close(&sparse.dbeta, &dense.dbeta, 1e-4, "dbeta");
    }

    /// The batch `indices` of 40 sample images of 50 pixels, BatchNorm's and the dense
    /// layer's parameters (`n` outputs), and a δ with its column sums `db`.
    struct Case<'a> {
        images: Vec<u8>,
        pixels: usize,
        indices: &'a [u32],
        scale: f32,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        w: Vec<f32>,
        bias: Vec<f32>,
        delta: Vec<f32>,
        db: Vec<f32>,
    }

    impl<'a> Case<'a> {
        fn new(indices: &'a [u32], n: usize) -> Self {
            let (count, pixels, batch) = (40, 50, indices.len());
            let val = |i: usize, a: usize, m: usize| ((i * a % m) as f32) / m as f32 - 0.5;
            let delta: Vec<f32> = (0..batch * n).map(|i| val(i, 29, 31)).collect();
            let mut db = vec![0.0; n];
            crate::layers::dense::cpu::bias_grad(&delta, batch, n, &mut db);
            Case {
                images: sample(count, pixels),
                pixels,
                indices,
                scale: 1.0 / 255.0,
                gamma: (0..pixels).map(|j| 1.0 + 0.5 * val(j, 3, 7)).collect(),
                beta: (0..pixels).map(|j| val(j, 5, 11)).collect(),
                w: (0..pixels * n).map(|i| val(i, 13, 17)).collect(),
                bias: (0..n).map(|i| val(i, 3, 5)).collect(),
                delta,
                db,
            }
        }

        /// Where each path's results go: zeros, but for the moving variance, which
        /// starts at 1 as in training.
        fn outputs(&self) -> FirstLayerOutputs {
            let (pixels, batch, n) = (self.pixels, self.indices.len(), self.bias.len());
            FirstLayerOutputs {
                moving_mean: vec![0.0; pixels],
                moving_var: vec![1.0; pixels],
                inv_std: vec![0.0; pixels],
                z: vec![0.0; batch * n],
                dw: vec![0.0; pixels * n],
                dgamma: vec![0.0; pixels],
                dbeta: vec![0.0; pixels],
            }
        }

        fn params(&self) -> Affine<&[f32]> {
            Affine {
                gamma: &self.gamma,
                beta: &self.beta,
            }
        }
    }

    impl FirstLayerOutputs {
        /// The moving statistics, to update, and `inv_std`.
        fn statistics(&mut self) -> (Moments<&mut [f32]>, &mut [f32]) {
            let moving = Moments {
                mean: &mut self.moving_mean[..],
                var: &mut self.moving_var[..],
            };
            (moving, &mut self.inv_std)
        }

        /// dγ and dβ, to write.
        fn bn_grads(&mut self) -> Affine<&mut [f32]> {
            Affine {
                gamma: &mut self.dgamma,
                beta: &mut self.dbeta,
            }
        }
    }

    /// What the dense reference and the sparse path both compute for a batch.
    struct FirstLayerOutputs {
        moving_mean: Vec<f32>,
        moving_var: Vec<f32>,
        inv_std: Vec<f32>,
        z: Vec<f32>,
        dw: Vec<f32>,
        dgamma: Vec<f32>,
        dbeta: Vec<f32>,
    }

    /// The dense reference: gather, `batchnorm_forward_train`, `gemm_forward`, then
    /// `gemm_weight_grad` on xhat and `batchnorm_dense_backward`.
    fn dense_first_layer(c: &Case) -> FirstLayerOutputs {
        use crate::layers::batchnorm::cpu::{
            batchnorm_dense_backward, batchnorm_forward_train, TrainOutputs,
        };
        use crate::layers::dense::cpu::{gemm_forward, gemm_weight_grad};
        let (pixels, batch, n) = (c.pixels, c.indices.len(), c.bias.len());
        let mut out = c.outputs();
        let mut x = vec![0.0f32; batch * pixels];
        crate::layers::batchnorm::cpu::gather_scaled(&c.images, pixels, c.indices, c.scale, &mut x);
        let (mut xhat, mut y) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let (moving, inv_std) = out.statistics();
        let bn_out = TrainOutputs {
            xhat: &mut xhat,
            y: &mut y,
            inv_std,
        };
        batchnorm_forward_train(&x, c.params(), &Hyper::default(), moving, bn_out);
        gemm_forward(&y, &c.w, &c.bias, batch, pixels, n, true, &mut out.z);
        gemm_weight_grad(&xhat, &c.delta, batch, pixels, n, &mut out.dw);
        let mut dw = std::mem::take(&mut out.dw);
        batchnorm_dense_backward(&mut dw, &c.w, c.params(), &c.db, out.bn_grads());
        out.dw = dw;
        out
    }

    /// The sparse path: [`ColumnBatch`], [`batch_stats`], the folded forward and
    /// [`sparse_first_layer_backward`].
    fn sparse_first_layer(c: &Case) -> FirstLayerOutputs {
        let (pixels, batch, n) = (c.pixels, c.indices.len(), c.bias.len());
        let mut out = c.outputs();
        let sparse = SparseImages::from_dense(&c.images, pixels);
        let mut columns = ColumnBatch::default();
        columns.fill(&sparse, c.indices, c.scale);
        let (mut mean, mut var) = (vec![0.0; pixels], vec![0.0; pixels]);
        batch_stats(&columns, batch, &mut mean, &mut var);
        let (moving, inv_std) = out.statistics();
        let batch_moments = Moments {
            mean: &mean[..],
            var: &var[..],
        };
        batchnorm_batch_update(batch_moments, &Hyper::default(), moving, inv_std);
        let (mut coef, mut row) = (vec![0.0; pixels], vec![0.0; n]);
        let inv_std = out.inv_std.clone();
        let first = FirstLayer {
            mean: &mean,
            inv_std: &inv_std,
            params: c.params(),
        };
        fold_batchnorm_into_dense(first, (&c.w, &c.bias), &mut coef, &mut row);
        let layer = FoldedLayer {
            coef: &coef,
            w: &c.w,
            row: &row,
            relu: true,
        };
        sparse_forward(&sparse, (c.indices, c.scale), layer, &mut out.z);
        let mut dw = std::mem::take(&mut out.dw);
        let delta = (&c.delta[..], &c.db[..]);
        let kernel = (first, Kernel::Read(&c.w));
        sparse_first_layer_backward(&columns, delta, kernel, &mut dw, out.bn_grads());
        out.dw = dw;
        out
    }

    /// Columns split by cost: with all the ink in the last quarter of the pixels (and
    /// the second half of the batch, in another group, inked in its last eighth only),
    /// each bound is the first column whose cost before it reaches its share, counted
    /// from the columns themselves, and two tasks meet inside the inked quarter.
    #[test]
    fn balanced_columns_split_by_entries() {
        let pixels = 64;
        let mut images = sample(100, pixels);
        for (i, image) in images.chunks_mut(pixels).enumerate() {
            image[..if i < 50 { 48 } else { 56 }].fill(0);
        }
        let sparse = SparseImages::from_dense(&images, pixels);
        let indices: Vec<u32> = (0..100).collect();
        let mut columns = ColumnBatch::default();
        columns.fill(&sparse, &indices, 1.0);
        assert!(
            columns.groups() > 1,
            "100 images make at least two groups of 64"
        );
        let entries = |j: usize| -> usize {
            let groups = 0..columns.groups();
            let column = |c| {
                groups
                    .clone()
                    .map(|g| columns.column(g, c).len())
                    .sum::<usize>()
            };
            (0..j).map(column).sum()
        };
        for (tasks, column_cost) in [(1, 0), (2, 0), (3, 5), (7, 1)] {
            let bounds = columns.balanced_columns(tasks, column_cost);
            let cost = |j: usize| entries(j) + column_cost * j;
            assert_eq!(bounds.len(), tasks + 1);
            assert!(bounds[0] == 0 && bounds[tasks] == pixels);
            for t in 1..tasks {
                let share = cost(pixels) * t / tasks;
                let (start, end) = (bounds[t - 1], bounds[t]);
                assert!(start <= end && cost(end) >= share, "{tasks}: {bounds:?}");
                assert!(end == start || cost(end - 1) < share, "{tasks}: {bounds:?}");
            }
            if tasks == 2 && column_cost == 0 {
                assert!(bounds[1] > 48, "{bounds:?}");
            }
        }
    }

    #[test]
    fn column_batch_is_the_transpose_in_batch_order() {
        let pixels = 6;
        let images = [
            0u8, 1, 0, 2, 0, 3, /* */ 4, 0, 0, 5, 0, 0, /* */ 0, 0, 0, 0, 0, 6,
        ];
        let sparse = SparseImages::from_dense(&images, pixels);
        let mut columns = ColumnBatch::default();
        columns.fill(&sparse, &[2, 0, 1, 0], 1.0);
        let column = |j: usize| -> Vec<(usize, f32)> {
            columns
                .column(0, j)
                .iter()
                .map(|&e| columns.decode(e))
                .collect()
        };
        assert_eq!(column(0), [(2, 4.0)]);
        assert_eq!(column(1), [(1, 1.0), (3, 1.0)]);
        assert_eq!(column(2), []);
        assert_eq!(column(3), [(1, 2.0), (2, 5.0), (3, 2.0)]);
        assert_eq!(column(5), [(0, 6.0), (1, 3.0), (3, 3.0)]);
    }
}
