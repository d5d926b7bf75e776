//! Dense: `y = x · W + b` (ReLU fused into the epilogue when the layer is followed by
//! one), and its two gradients, all through one tiled GEMM (`gemm.wgsl`: `gemm`, split
//! over k for products with few tiles ([`split_k`]), or `gemm_wide` for large ones
//! ([`wide_tiles`])); the CPU reference is [`cpu`].
//!
//! The trainer and the agreement cases build their dispatches with the same
//! [`Pipelines::dispatch`] of a [`LinearOp`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, elementwise_groups, uniform, Dispatch, Work};

/// GEMM output tile edge (rows and columns per workgroup).
pub const GEMM_TILE: u32 = 64;
/// The k-slice of a workgroup's loop (`TK` in `gemm.wgsl`): a split's k-range is a
/// multiple of it.
pub const GEMM_K_SLICE: u32 = 32;
/// Most splits of one product's k (see [`split_k`]).
pub const MAX_SPLITS: u32 = 32;
/// Output tile edge of the wide-tile GEMM (`gemm_wide`, see [`wide_tiles`]).
pub const GEMM_WIDE_TILE: u32 = 128;
/// Products with at least this many wide tiles' worth of outputs run `gemm_wide`.
pub const WIDE_FROM_TILES: usize = 128;

pub const GEMM_BIAS: u32 = 1;
pub const GEMM_RELU: u32 = 2;
pub const GEMM_MASK: u32 = 4;
pub const GEMM_ONES_ROW: u32 = 8;

uniform! {
    /// Uniform block of `gemm.wgsl` (see the shader for the meaning of each field).
    pub struct GemmUniform as "Gemm" {
        pub m: u32, pub n: u32, pub k: u32, pub flags: u32,
        pub a_off: u32, pub a_rs: u32, pub a_cs: u32,
        pub b_off: u32, pub b_rs: u32, pub b_cs: u32,
        pub c_off: u32, pub ldc: u32,
        pub e_off: u32, pub lde: u32,
        pub c2_off: u32,
        pub splits: u32, pub k_split: u32,
    }
}

bindings! {
    /// `gemm.wgsl`: `c = a · b` with the epilogue (bias, ReLU, mask) read from `e`.
    GemmBindings(GemmUniform) for ["gemm"] => {
        a: Read<f32> = 1, b: Read<f32> = 2, e: Read<f32> = 3,
        c: ReadWrite<f32> = 4,
    }
    /// `gemm.wgsl:gemm_wide`: as `gemm`, in 128×128 tiles; `a4` and `b4` are `a` and `b`
    /// again, read as vec4 where an operand's layout allows.
    GemmWideBindings(GemmUniform) for ["gemm_wide"] => {
        a: Read<f32> = 1, b: Read<f32> = 2, e: Read<f32> = 3,
        c: ReadWrite<f32> = 4, a4: Read<vec4f> = 6, b4: Read<vec4f> = 7,
    }
    /// `gemm.wgsl:gemm_split`: each split's raw sums of `a · b` into `partial`.
    GemmSplitBindings(GemmUniform) for ["gemm_split"] => {
        a: Read<f32> = 1, b: Read<f32> = 2, partial: ReadWrite<f32> = 5,
    }
    /// `gemm.wgsl:reduce`: `c` = the splits' sums in `partial`, added in order, with the
    /// epilogue.
    GemmReduceBindings(GemmUniform) for ["reduce"] => {
        e: Read<f32> = 3, c: ReadWrite<f32> = 4, partial: ReadWrite<f32> = 5,
    }
}

/// One dense layer on a batch: `rows` rows of `inputs` features to `units` outputs,
/// with its kernel (`[inputs, units]`, row-major) and bias at these element offsets of
/// the parameter (and gradient) buffers.
#[derive(Clone, Copy, Debug)]
pub struct DenseShape {
    pub rows: usize,
    pub inputs: usize,
    pub units: usize,
    pub kernel_off: usize,
    pub bias_off: usize,
}

impl DenseShape {
    /// A layer alone in its buffers: its kernel at the start, its bias after it.
    pub fn alone(rows: usize, inputs: usize, units: usize) -> DenseShape {
        DenseShape {
            rows,
            inputs,
            units,
            kernel_off: 0,
            bias_off: inputs * units,
        }
    }
}

/// How the GEMM reads an operand: its element offset and (row, column) strides.
struct Operand {
    off: usize,
    rs: usize,
    cs: usize,
}

/// A row-major matrix of `cols` columns at element `off`, read as it is stored.
fn as_stored(off: usize, cols: usize) -> Operand {
    Operand {
        off,
        rs: cols,
        cs: 1,
    }
}

/// The same matrix read transposed: transposes are only strides.
fn transposed(off: usize, cols: usize) -> Operand {
    Operand {
        off,
        rs: 1,
        cs: cols,
    }
}

impl GemmUniform {
    /// `c[m,n] = a[m,k] · b[k,n]` into a row-major `c` at offset 0, with the epilogue
    /// `flags`; the callers set the epilogue's offsets.
    fn product([m, n, k]: [usize; 3], a: Operand, b: Operand, flags: u32) -> Self {
        let u = |v: usize| v as u32;
        GemmUniform {
            m: u(m),
            n: u(n),
            k: u(k),
            flags,
            a_off: u(a.off),
            a_rs: u(a.rs),
            a_cs: u(a.cs),
            b_off: u(b.off),
            b_rs: u(b.rs),
            b_cs: u(b.cs),
            ldc: u(n),
            splits: 1,
            k_split: u(k).next_multiple_of(GEMM_K_SLICE),
            ..Default::default()
        }
    }

    /// This product with its k split into `splits` ranges (1: not split), each a
    /// multiple of [`GEMM_K_SLICE`].
    pub fn split(self, splits: u32) -> Self {
        let slices = self.k.div_ceil(GEMM_K_SLICE).max(1);
        let splits = splits.clamp(1, slices);
        // As even as whole slices allow; the last split may be shorter.
        let k_split = slices.div_ceil(splits) * GEMM_K_SLICE;
        GemmUniform {
            splits: self.k.div_ceil(k_split).max(1),
            k_split,
            ..self
        }
    }

    /// `y[m,n] = x[m,k] · w[k,n] + bias` (ReLU when `relu`).
    pub fn forward(s: &DenseShape, relu: bool) -> Self {
        let flags = GEMM_BIAS | if relu { GEMM_RELU } else { 0 };
        let (x, w) = (as_stored(0, s.inputs), as_stored(s.kernel_off, s.units));
        GemmUniform {
            e_off: s.bias_off as u32,
            ..Self::product([s.rows, s.units, s.inputs], x, w, flags)
        }
    }

    /// `dw[k,n] = xᵀ · dy` written at the kernel's offset, and the bias gradient (column
    /// sums of dy, the product with an appended row of ones) at the bias's.
    pub fn weight_grad(s: &DenseShape) -> Self {
        let (x_t, dy) = (transposed(0, s.inputs), as_stored(0, s.units));
        GemmUniform {
            c_off: s.kernel_off as u32,
            c2_off: s.bias_off as u32,
            ..Self::product([s.inputs + 1, s.units, s.rows], x_t, dy, GEMM_ONES_ROW)
        }
    }

    /// `dx[m,k] = dy[m,n] · wᵀ`, zeroed where the epilogue buffer (the layer input's
    /// ReLU output, `[m,k]`) is ≤ 0 when `mask`.
    pub fn input_grad(s: &DenseShape, mask: bool) -> Self {
        let (dy, w_t) = (as_stored(0, s.units), transposed(s.kernel_off, s.units));
        let flags = if mask { GEMM_MASK } else { 0 };
        GemmUniform {
            lde: s.inputs as u32,
            ..Self::product([s.rows, s.inputs, s.units], dy, w_t, flags)
        }
    }

    /// Workgroups to dispatch.
    pub fn workgroups(&self) -> [u32; 3] {
        [
            self.n.div_ceil(GEMM_TILE),
            self.m.div_ceil(GEMM_TILE),
            self.splits.max(1),
        ]
    }

    /// Workgroups of the wide-tile GEMM (`gemm_wide`), which does not split k.
    pub fn wide_workgroups(&self) -> [u32; 3] {
        [
            self.n.div_ceil(GEMM_WIDE_TILE),
            self.m.div_ceil(GEMM_WIDE_TILE),
            1,
        ]
    }

    /// The product's least work: `2·m·k·n` operations; `a`, `b` and the epilogue's
    /// bias or mask read once, and `c` written once (split: each split's partial sums).
    pub fn work(&self) -> Work {
        let (m, n, k) = (self.m as f64, self.n as f64, self.k as f64);
        let outputs = if self.splits > 1 {
            self.splits as f64 * m * n
        } else {
            m * n + self.epilogue_floats()
        };
        Work::new(2.0 * m * k * n, m * k + k * n + outputs)
    }

    /// The reduction of a split product's partial sums: each read once, `c` written once.
    pub fn reduce_work(&self) -> Work {
        let (outputs, splits) = (self.m as f64 * self.n as f64, self.splits as f64);
        let floats = (splits + 1.0) * outputs + self.epilogue_floats();
        Work::new(splits * outputs, floats)
    }

    /// Floats the epilogue reads: the bias (`n`) or the mask (`m·n`).
    fn epilogue_floats(&self) -> f64 {
        let (m, n) = (self.m as f64, self.n as f64);
        match (self.flags & GEMM_BIAS != 0, self.flags & GEMM_MASK != 0) {
            (true, _) => n,
            (_, true) => m * n,
            _ => 0.0,
        }
    }

    /// Floats of the `partial` buffer a split product needs (none unsplit).
    pub fn partial_len(&self) -> usize {
        if self.splits <= 1 {
            return 0;
        }
        self.splits as usize * self.m as usize * self.n as usize
    }
}

/// How many ranges to split the k of an `m`×`k`·`k`×`n` product into, on a GPU with many
/// cores (software adapters, with a core or two per thread group, never split): only
/// products of fewer than [`SPLIT_BELOW_TILES`] output tiles with k of at least four
/// slices, into one split per slice, at most [`MAX_SPLITS`], and at most
/// [`SPLIT_TARGET_GROUPS`] workgroups in all. The first layer's forward at batch 32 (2
/// tiles, k = 784) becomes 25 splits, 50 workgroups. Chosen from the H200's profile
/// (that product alone took 54% of a batch-32 step on 2 workgroups, 39 GFLOP/s), not yet
/// measured there. The trainer applies it to all three forms; a weight gradient's k is
/// the batch, so from batch 97 on (four k-slices) the small layers' weight and bias
/// gradients (sums over the batch, one thread per output otherwise) are spread over k
/// too: the 128→10 layer's at batch 512 goes from 3 workgroups to 48.
pub fn split_k(m: usize, k: usize, n: usize) -> u32 {
    let tiles = (m as u32).div_ceil(GEMM_TILE) * (n as u32).div_ceil(GEMM_TILE);
    let slices = (k as u32).div_ceil(GEMM_K_SLICE);
    if tiles >= SPLIT_BELOW_TILES || slices < 4 {
        return 1;
    }
    slices.min(MAX_SPLITS).min(SPLIT_TARGET_GROUPS / tiles)
}

/// The splits [`split_k`] gives `op`'s product on `shape`.
pub fn product_splits(shape: &DenseShape, op: &LinearOp) -> u32 {
    GemmUniform::of(shape, op).rule_splits()
}

/// Floats of partial sums the most split of `shape`'s three products needs when each is
/// split as [`split_k`] says.
pub fn partial_floats(shape: &DenseShape) -> usize {
    let forms = [
        GemmUniform::forward(shape, false),
        GemmUniform::weight_grad(shape),
        GemmUniform::input_grad(shape, false),
    ];
    forms
        .into_iter()
        .map(|u| u.split(u.rule_splits()).partial_len())
        .max()
        .unwrap_or(0)
}

/// Whether an `m`×`n` product runs the wide-tile GEMM (`gemm_wide`: 128×128 tiles of 256
/// threads, double-buffered k-slices, vec4 loads) on a GPU with many cores: outputs of at
/// least [`WIDE_FROM_TILES`] such tiles, about one workgroup for each of an H200's 132
/// SMs (a smaller product leaves SMs idle that the 64×64 `gemm`'s four times as many
/// workgroups would fill). The square 4096 product and the big products of `--hidden
/// 4096,4096 --batch-size 512` qualify; the square 1024 (64 tiles) and the default
/// model's layers (784→128→10) do not. Written for the H200, where the 64×64 `gemm`
/// reaches 11.5 TFLOP/s at 4096³; not yet measured there: the bench's `gemm/square/…
/// wide` rows beside the `gemm` ones say where the threshold belongs. Software adapters
/// never use it (the trainer only applies the rule on hardware); the split-K rule
/// ([`split_k`], fewer than 16 tiles of 64) never picks the same products, and would win
/// if it did.
pub fn wide_tiles(m: usize, n: usize) -> bool {
    let tile = GEMM_WIDE_TILE as usize;
    m * n >= WIDE_FROM_TILES * tile * tile
}

/// Whether [`wide_tiles`] picks `op`'s product on `shape`.
pub fn product_wide(shape: &DenseShape, op: &LinearOp) -> bool {
    let u = GemmUniform::of(shape, op);
    wide_tiles(u.m as usize, u.n as usize)
}

/// Products with at least this many output tiles are not split.
pub const SPLIT_BELOW_TILES: u32 = 16;
/// Most workgroups a split product is spread over.
pub const SPLIT_TARGET_GROUPS: u32 = 128;

family! {
    /// The dense layer family.
    Dense: "gemm" in "gemm.wgsl", uniform GemmUniform => {
        gemm: GemmBindings = "gemm",
        gemm_split: GemmSplitBindings = "gemm_split",
        gemm_wide: GemmWideBindings = "gemm_wide",
        reduce: GemmReduceBindings = "reduce",
    }
}

/// The three products of a linear layer, with the buffers each reads and writes: a
/// dense layer's, and a Conv2D's (a dense layer applied to every patch).
pub enum LinearOp<'a> {
    /// `y = x · W + b` (then ReLU when `relu`), W and b read from `params` at the layer's
    /// offsets.
    Forward {
        x: &'a wgpu::Buffer,
        params: &'a wgpu::Buffer,
        y: &'a wgpu::Buffer,
        relu: bool,
    },
    /// `dW = xᵀ · dy` and `db = Σ dy` into `grads` at the layer's offsets.
    WeightGrad {
        x: &'a wgpu::Buffer,
        dy: &'a wgpu::Buffer,
        grads: &'a wgpu::Buffer,
    },
    /// `dx = dy · Wᵀ`, zeroed where `relu_out` (the input's ReLU output) is ≤ 0.
    InputGrad {
        dy: &'a wgpu::Buffer,
        params: &'a wgpu::Buffer,
        dx: &'a wgpu::Buffer,
        relu_out: Option<&'a wgpu::Buffer>,
    },
}

/// A product's buffers: `out = lhs · rhs` (up to transposes and the layer's layout), and
/// the mask an input gradient applies (the ReLU output of the layer below), if any.
pub struct Operands<'a> {
    pub lhs: &'a wgpu::Buffer,
    pub rhs: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    pub mask: Option<&'a wgpu::Buffer>,
}

impl<'a> LinearOp<'a> {
    /// The product's buffers; the kernels of both linear families bind them this way.
    pub fn operands(&self) -> Operands<'a> {
        let (lhs, rhs, out, mask) = match *self {
            LinearOp::Forward { x, params, y, .. } => (x, params, y, None),
            LinearOp::WeightGrad { x, dy, grads } => (x, dy, grads, None),
            LinearOp::InputGrad {
                dy,
                params,
                dx,
                relu_out,
            } => (dy, params, dx, relu_out),
        };
        Operands {
            lhs,
            rhs,
            out,
            mask,
        }
    }
}

impl Pipelines {
    /// The dispatch of `op` on the layer `shape`.
    pub fn dispatch(&self, shape: &DenseShape, op: LinearOp) -> Dispatch {
        let u = GemmUniform::of(shape, &op);
        let [a, b, e, c] = op.gemm_buffers();
        self.gemm
            .dispatch(&u, &GemmBindings { a, b, e, c }, u.workgroups())
            .with_work(u.work())
    }

    /// The dispatch of `op` on `shape` through the wide-tile GEMM (see [`wide_tiles`]),
    /// whatever its size.
    pub fn dispatch_wide(&self, shape: &DenseShape, op: LinearOp) -> Dispatch {
        let u = GemmUniform::of(shape, &op);
        let [a, b, e, c] = op.gemm_buffers();
        let bindings = GemmWideBindings {
            a,
            b,
            e,
            c,
            a4: a,
            b4: b,
        };
        self.gemm_wide
            .dispatch(&u, &bindings, u.wide_workgroups())
            .with_work(u.work())
    }

    /// The dispatches of `op` on `shape` with its k split `splits` ways (see [`split_k`]):
    /// the partial products into `partial` (at least [`GemmUniform::partial_len`]
    /// floats), then their reduction with the epilogue. Unsplit (1), [`Self::dispatch`].
    pub fn dispatch_split(
        &self,
        shape: &DenseShape,
        op: LinearOp,
        (partial, splits): (&wgpu::Buffer, u32),
    ) -> Vec<Dispatch> {
        let u = GemmUniform::of(shape, &op).split(splits);
        if u.splits <= 1 {
            return vec![self.dispatch(shape, op)];
        }
        let [a, b, e, c] = op.gemm_buffers();
        let products = GemmSplitBindings { a, b, partial };
        let reduce = GemmReduceBindings { e, c, partial };
        let outputs = elementwise_groups(u.m as usize * u.n as usize);
        vec![
            (self.gemm_split.dispatch(&u, &products, u.workgroups())).with_work(u.work()),
            (self.reduce.dispatch(&u, &reduce, outputs)).with_work(u.reduce_work()),
        ]
    }
}

impl<'a> LinearOp<'a> {
    /// The GEMM's `a`, `b`, `e` and `c`. The epilogue reads the bias from `params` in the
    /// forward, and the mask in an input gradient; otherwise it is not read, and an input
    /// is bound in its place.
    fn gemm_buffers(&self) -> [&'a wgpu::Buffer; 4] {
        let o = self.operands();
        [o.lhs, o.rhs, o.mask.unwrap_or(o.rhs), o.out]
    }
}

impl GemmUniform {
    /// The splits [`split_k`] gives this product.
    fn rule_splits(&self) -> u32 {
        split_k(self.m as usize, self.k as usize, self.n as usize)
    }

    /// The uniform of `op` on `shape`, unsplit.
    fn of(shape: &DenseShape, op: &LinearOp) -> Self {
        match op {
            LinearOp::Forward { relu, .. } => GemmUniform::forward(shape, *relu),
            LinearOp::WeightGrad { .. } => GemmUniform::weight_grad(shape),
            LinearOp::InputGrad { relu_out, .. } => {
                GemmUniform::input_grad(shape, relu_out.is_some())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{split_k, wide_tiles, DenseShape, GemmUniform};
    use crate::device::kernel::Work;

    /// The three products of a 784→128 layer at batch 32, their least work by hand: the
    /// forward reads x, W and the bias and writes y; the weight gradient's m counts the
    /// bias row (ones); the masked input gradient reads the mask too. Split four ways,
    /// the products write four partial sums, which the reduction reads and sums.
    #[test]
    fn a_products_work_is_its_operations_and_operands() {
        let s = DenseShape::alone(32, 784, 128);
        let (b, i, o) = (32.0, 784.0, 128.0);
        let forward = GemmUniform::forward(&s, true);
        let by_hand = Work::new(2.0 * b * i * o, b * i + i * o + b * o + o);
        assert_eq!(forward.work(), by_hand);
        let weight_grad = GemmUniform::weight_grad(&s);
        let by_hand = Work::new(
            2.0 * (i + 1.0) * b * o,
            (i + 1.0) * b + b * o + (i + 1.0) * o,
        );
        assert_eq!(weight_grad.work(), by_hand);
        let input_grad = GemmUniform::input_grad(&s, true);
        let by_hand = Work::new(2.0 * b * o * i, b * o + o * i + 2.0 * b * i);
        assert_eq!(input_grad.work(), by_hand);
        let split = forward.split(4);
        assert_eq!(split.splits, 4);
        let by_hand = Work::new(2.0 * b * i * o, b * i + i * o + 4.0 * b * o);
        assert_eq!(split.work(), by_hand);
        let by_hand = Work::new(4.0 * b * o, 5.0 * b * o + o);
        assert_eq!(split.reduce_work(), by_hand);
    }

    /// The products the rule names: the square 4096 and the big products of `--hidden
    /// 4096,4096 --batch-size 512` (forwards, weight gradients with the ones row, the
    /// evaluation's 1000-row chunks) are wide; the default model's (784→128→10 at batch
    /// 512, and its evaluation) are not.
    #[test]
    fn wide_tiles_picks_only_large_outputs() {
        let wide = [
            (2048, 1024),
            (4096, 4096),
            (512, 4096),
            (785, 4096),
            (4097, 4096),
            (1000, 4096),
        ];
        for (m, n) in wide {
            assert!(wide_tiles(m, n), "{m}x{n} is large");
        }
        let narrow = [
            (512, 128),
            (785, 128),
            (129, 10),
            (512, 10),
            (1000, 128),
            (1024, 1024),
            (2047, 1024),
        ];
        for (m, n) in narrow {
            assert!(!wide_tiles(m, n), "{m}x{n} is not large");
        }
    }

    /// No product qualifies for both split-K and wide tiles.
    #[test]
    fn split_and_wide_products_never_meet() {
        for m in (1..=2048).step_by(17) {
            for n in (1..=2048).step_by(23) {
                let split = split_k(m, 4096, n) > 1;
                assert!(!(split && wide_tiles(m, n)), "{m}x{n}");
            }
        }
    }
}
