//! The GPU twin of each CPU kernel, callable from the host: upload the inputs, run ONE
//! dispatch of the trainer's own pipeline, read the outputs back. The agreement tests
//! check each against its CPU twin (`src/cpu/`) under the same name, and the benches
//! time them; training never calls these.

use super::bindings::*;
use super::context::GpuContext;
use super::error::DeviceError;
use super::kernels::{
    elementwise_groups, kernel, module, pack_pixels, record, storage_init, storage_zeroed, uniform,
    AdamUniform, BnSetup, BnUniform, Dispatch, GemmUniform, Kernel, Kernels, ReluUniform,
    SoftmaxUniform, RELU_WGSL,
};

/// What [`Kernels::batchnorm_dense_backward`] reads back.
pub struct BnDenseGrads {
    pub dw: Vec<f32>,
    pub dgamma: Vec<f32>,
    pub dbeta: Vec<f32>,
}

/// Outputs of [`Kernels::batchnorm_forward_train`].
pub struct BnTrainOutput {
    pub xhat: Vec<f32>,
    pub y: Vec<f32>,
    pub inv_std: Vec<f32>,
}

fn run_one(ctx: &GpuContext, dispatch: Dispatch) -> Result<(), DeviceError> {
    ctx.scoped("running a kernel", || {
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            record(&mut pass, std::slice::from_ref(&dispatch));
        }
        ctx.queue.submit([encoder.finish()]);
    })?;
    ctx.wait()
}

/// The BatchNorm layer of a twin: `features` features, with γ and β at the start of its
/// parameter buffer (`[gamma, beta]`).
fn bn_setup(features: usize, scale: f32, eps: f32, momentum: f32) -> BnSetup {
    BnSetup {
        features,
        gamma_off: 0,
        beta_off: features,
        scale,
        eps,
        momentum,
    }
}

/// The buffers of a BatchNorm forward dispatch that training and evaluation fill
/// differently.
struct BnForwardBuffers<'a> {
    order: &'a wgpu::Buffer,
    stats: &'a wgpu::Buffer,
    xhat: &'a wgpu::Buffer,
    y: &'a wgpu::Buffer,
}

/// One dispatch of a BatchNorm forward `kernel` on `images` (packed 4 per word), with
/// the parameters `[gamma, beta]` (where [`bn_setup`]'s offsets find them) and a zeroed
/// step counter.
fn run_batchnorm_forward(
    ctx: &GpuContext,
    kernel: &Kernel,
    u: BnUniform,
    images: &[u8],
    (gamma, beta): (&[f32], &[f32]),
    outputs: BnForwardBuffers,
) -> Result<(), DeviceError> {
    let d = &ctx.device;
    let pixels = storage_init(ctx, "pixels", bytemuck::cast_slice(&pack_pixels(images)));
    let state = storage_zeroed(d, "state", 16);
    let params = storage_init(ctx, "params", bytemuck::cast_slice(&[gamma, beta].concat()));
    let ub = uniform(d, "bn", &u);
    let bindings = BatchnormForwardBindings {
        u: &ub,
        pixels: &pixels,
        order: outputs.order,
        state: &state,
        params: &params,
        stats: outputs.stats,
        xhat: outputs.xhat,
        y: outputs.y,
    };
    run_one(ctx, kernel.dispatch(d, &bindings, u.workgroups()))
}

/// `softmax_xent`'s loss sum (f32 bits) and correct count, the first two words of `stats`.
fn read_loss_and_correct(
    ctx: &GpuContext,
    stats: &wgpu::Buffer,
) -> Result<(f32, u32), DeviceError> {
    let s = ctx.read_vec::<u8>(stats, 0, 8)?;
    let words: &[u32] = bytemuck::cast_slice(&s);
    Ok((f32::from_bits(words[0]), words[1]))
}

/// In training `softmax_xent` advances the step counter: from 0 it must now read 1.
fn check_one_step_taken(ctx: &GpuContext, state: &wgpu::Buffer) -> Result<(), DeviceError> {
    let st = ctx.read_vec::<u8>(state, 0, 4)?;
    let t = bytemuck::cast_slice::<u8, u32>(&st)[0];
    if t != 1 {
        return Err(DeviceError::Gpu(format!(
            "softmax kernel left the step counter at {t}, expected 1"
        )));
    }
    Ok(())
}

/// The `batch` predicted classes `softmax_xent` wrote in evaluation (one u32 each).
fn read_predictions(
    ctx: &GpuContext,
    preds: &wgpu::Buffer,
    batch: usize,
) -> Result<Vec<u8>, DeviceError> {
    let p = ctx.read_vec::<u8>(preds, 0, batch * 4)?;
    Ok(bytemuck::cast_slice::<u8, u32>(&p)
        .iter()
        .map(|&v| v as u8)
        .collect())
}

impl Kernels {
    fn gemm_dispatch(
        &self,
        ctx: &GpuContext,
        u: GemmUniform,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        e: &wgpu::Buffer,
        c: &wgpu::Buffer,
    ) -> Result<(), DeviceError> {
        let ub = uniform(&ctx.device, "gemm", &u);
        let bindings = GemmBindings { u: &ub, a, b, e, c };
        run_one(
            ctx,
            self.gemm.dispatch(&ctx.device, &bindings, u.workgroups()),
        )
    }

    /// GPU twin of [`crate::cpu::gemm::gemm_forward`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_forward(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        m: usize,
        k: usize,
        n: usize,
        relu: bool,
    ) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let (xb, wb, bb) = (
            storage_init(ctx, "x", bytemuck::cast_slice(x)),
            storage_init(ctx, "w", bytemuck::cast_slice(w)),
            storage_init(ctx, "bias", bytemuck::cast_slice(bias)),
        );
        let y = storage_zeroed(d, "y", (m * n * 4) as u64);
        self.gemm_dispatch(
            ctx,
            GemmUniform::forward(m, k, n, 0, 0, relu),
            &xb,
            &wb,
            &bb,
            &y,
        )?;
        ctx.read_vec::<f32>(&y, 0, m * n)
    }

    /// GPU twin of [`crate::cpu::gemm::gemm_weight_grad`] and [`crate::cpu::gemm::bias_grad`]
    /// (one fused dispatch): returns `(dw [k,n], db [n])`.
    pub fn gemm_weight_grad(
        &self,
        ctx: &GpuContext,
        x: &[f32],
        dy: &[f32],
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), DeviceError> {
        let d = &ctx.device;
        let (xb, dyb) = (
            storage_init(ctx, "x", bytemuck::cast_slice(x)),
            storage_init(ctx, "dy", bytemuck::cast_slice(dy)),
        );
        let out = storage_zeroed(d, "dw", ((k + 1) * n * 4) as u64);
        self.gemm_dispatch(
            ctx,
            GemmUniform::weight_grad(m, k, n, 0, k * n),
            &xb,
            &dyb,
            &xb,
            &out,
        )?;
        let all = ctx.read_vec::<f32>(&out, 0, (k + 1) * n)?;
        Ok((all[..k * n].to_vec(), all[k * n..].to_vec()))
    }

    /// GPU twin of [`crate::cpu::gemm::gemm_input_grad`] (with the fused ReLU mask).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_input_grad(
        &self,
        ctx: &GpuContext,
        dy: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        mask: Option<&[f32]>,
    ) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let (dyb, wb) = (
            storage_init(ctx, "dy", bytemuck::cast_slice(dy)),
            storage_init(ctx, "w", bytemuck::cast_slice(w)),
        );
        let eb = storage_init(ctx, "mask", bytemuck::cast_slice(mask.unwrap_or(&[0.0])));
        let dx = storage_zeroed(d, "dx", (m * k * 4) as u64);
        self.gemm_dispatch(
            ctx,
            GemmUniform::input_grad(m, k, n, 0, mask.is_some()),
            &dyb,
            &wb,
            &eb,
            &dx,
        )?;
        ctx.read_vec::<f32>(&dx, 0, m * k)
    }

    /// GPU twin of [`crate::cpu::batchnorm::batchnorm_forward_train`] fused with
    /// [`crate::cpu::gather_scaled`]: gathers `indices` from `images` (u8, `features` per
    /// image); the moving statistics are updated in place.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_forward_train(
        &self,
        ctx: &GpuContext,
        images: &[u8],
        indices: &[u32],
        scale: f32,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        momentum: f32,
        moving_mean: &mut [f32],
        moving_var: &mut [f32],
    ) -> Result<BnTrainOutput, DeviceError> {
        let f = gamma.len();
        let b = indices.len();
        let d = &ctx.device;
        let order = storage_init(ctx, "order", bytemuck::cast_slice(indices));
        let stats_host = [&moving_mean[..], &moving_var[..], &vec![0.0; f][..]].concat();
        let stats = storage_init(ctx, "stats", bytemuck::cast_slice(&stats_host));
        let xhat = storage_zeroed(d, "xhat", (b * f * 4) as u64);
        let y = storage_zeroed(d, "y", (b * f * 4) as u64);
        let u = BnUniform::training(b, b, &bn_setup(f, scale, eps, momentum));
        let outputs = BnForwardBuffers {
            order: &order,
            stats: &stats,
            xhat: &xhat,
            y: &y,
        };
        let kernel = &self.batchnorm_forward_train;
        run_batchnorm_forward(ctx, kernel, u, images, (gamma, beta), outputs)?;
        let stats_out = ctx.read_vec::<f32>(&stats, 0, 3 * f)?;
        moving_mean.copy_from_slice(&stats_out[..f]);
        moving_var.copy_from_slice(&stats_out[f..2 * f]);
        Ok(BnTrainOutput {
            xhat: ctx.read_vec::<f32>(&xhat, 0, b * f)?,
            y: ctx.read_vec::<f32>(&y, 0, b * f)?,
            inv_std: stats_out[2 * f..].to_vec(),
        })
    }

    /// GPU twin of [`crate::cpu::batchnorm::batchnorm_forward_eval`] fused with the gather
    /// of images `0..batch`.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_forward_eval(
        &self,
        ctx: &GpuContext,
        images: &[u8],
        batch: usize,
        scale: f32,
        gamma: &[f32],
        beta: &[f32],
        moving_mean: &[f32],
        moving_var: &[f32],
        eps: f32,
    ) -> Result<Vec<f32>, DeviceError> {
        let f = gamma.len();
        let d = &ctx.device;
        let unused = storage_zeroed(d, "unused", 16);
        let stats = storage_init(
            ctx,
            "stats",
            bytemuck::cast_slice(&[moving_mean, moving_var].concat()),
        );
        let xhat = storage_zeroed(d, "xhat", 16);
        let y = storage_zeroed(d, "y", (batch * f * 4) as u64);
        // Evaluation never moves the moving statistics: no momentum.
        let u = BnUniform::evaluation(batch, 0, &bn_setup(f, scale, eps, 0.0));
        let outputs = BnForwardBuffers {
            order: &unused,
            stats: &stats,
            xhat: &xhat,
            y: &y,
        };
        let kernel = &self.batchnorm_forward_eval;
        run_batchnorm_forward(ctx, kernel, u, images, (gamma, beta), outputs)?;
        ctx.read_vec::<f32>(&y, 0, batch * f)
    }

    /// GPU twin of [`crate::cpu::batchnorm::batchnorm_dense_backward`]: from
    /// `G = xhatᵀ·δ` (`[features, n]`) returns `(dW, dgamma, dbeta)`, with the per-thread
    /// kernel when `per_feature`, else the per-workgroup one.
    #[allow(clippy::too_many_arguments)]
    pub fn batchnorm_dense_backward(
        &self,
        ctx: &GpuContext,
        per_feature: bool,
        grad_w: &[f32],
        w: &[f32],
        gamma: &[f32],
        beta: &[f32],
        dbias: &[f32],
    ) -> Result<BnDenseGrads, DeviceError> {
        let d = &ctx.device;
        let (f, n) = (gamma.len(), dbias.len());
        // Both buffers use the trainer's order: gamma, beta, kernel (, bias).
        let params = storage_init(
            ctx,
            "params",
            bytemuck::cast_slice(&[gamma, beta, w].concat()),
        );
        let zeros = vec![0.0f32; 2 * f];
        let grads = storage_init(
            ctx,
            "grads",
            bytemuck::cast_slice(&[&zeros[..], grad_w, dbias].concat()),
        );
        let u = BnUniform {
            gamma_off: 0,
            beta_off: f as u32,
            features: f as u32,
            kernel_off: 2 * f as u32,
            bias_off: (2 * f + f * n) as u32,
            width: n as u32,
            ..Default::default()
        };
        let ub = uniform(d, "bn", &u);
        let (kernel, groups) = self.batchnorm_dense_backward_variant(&u, per_feature);
        let bindings = BatchnormDenseBackwardBindings {
            u: &ub,
            params: &params,
            grads: &grads,
        };
        run_one(ctx, kernel.dispatch(d, &bindings, groups))?;
        let all = ctx.read_vec::<f32>(&grads, 0, 2 * f + f * n)?;
        Ok(BnDenseGrads {
            dw: all[2 * f..].to_vec(),
            dgamma: all[..f].to_vec(),
            dbeta: all[f..2 * f].to_vec(),
        })
    }

    /// GPU twin of [`crate::cpu::softmax_xent::softmax_xent`]: `(loss_sum, correct,
    /// gradient (training) or empty, predictions (evaluation) or empty)`.
    pub fn softmax_xent(
        &self,
        ctx: &GpuContext,
        logits: &[f32],
        labels: &[u8],
        classes: usize,
        training: bool,
    ) -> Result<(f32, u32, Vec<f32>, Vec<u8>), DeviceError> {
        let b = labels.len();
        let d = &ctx.device;
        let lb = storage_init(ctx, "logits", bytemuck::cast_slice(logits));
        let labels32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let lab = storage_init(ctx, "labels", bytemuck::cast_slice(&labels32));
        let order: Vec<u32> = (0..b as u32).collect();
        let ob = storage_init(ctx, "order", bytemuck::cast_slice(&order));
        let state = storage_zeroed(d, "state", 16);
        let grad = storage_zeroed(d, "grad", (b * classes * 4) as u64);
        let stats = storage_zeroed(d, "stats", 16);
        let preds = storage_zeroed(d, "preds", (b * 4) as u64);
        let u = if training {
            SoftmaxUniform::training(b, classes, b)
        } else {
            SoftmaxUniform::evaluation(b, classes, 0, 0)
        };
        let ub = uniform(d, "softmax_xent", &u);
        let bindings = SoftmaxXentBindings {
            u: &ub,
            logits: &lb,
            labels: &lab,
            order: &ob,
            state: &state,
            grad: &grad,
            stats: &stats,
            predictions: &preds,
        };
        run_one(ctx, self.softmax_xent.dispatch(d, &bindings, [1, 1, 1]))?;
        let (loss, correct) = read_loss_and_correct(ctx, &stats)?;
        if training {
            check_one_step_taken(ctx, &state)?;
            let gradient = ctx.read_vec::<f32>(&grad, 0, b * classes)?;
            Ok((loss, correct, gradient, Vec::new()))
        } else {
            Ok((loss, correct, Vec::new(), read_predictions(ctx, &preds, b)?))
        }
    }

    /// GPU twin of [`crate::cpu::adam::adam_update`] with a given `alpha`; updates in place.
    #[allow(clippy::too_many_arguments)]
    pub fn adam(
        &self,
        ctx: &GpuContext,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        alpha: f32,
        hyper: &crate::model::Hyper,
    ) -> Result<(), DeviceError> {
        let n = params.len();
        let d = &ctx.device;
        let state = storage_init(ctx, "state", bytemuck::cast_slice(&[1u32, 0, 0, 0]));
        let alphas = storage_init(ctx, "alphas", bytemuck::cast_slice(&[alpha]));
        let gb = storage_init(ctx, "grads", bytemuck::cast_slice(grads));
        let pb = storage_init(ctx, "params", bytemuck::cast_slice(params));
        let mb = storage_init(ctx, "m", bytemuck::cast_slice(m));
        let vb = storage_init(ctx, "v", bytemuck::cast_slice(v));
        let u = AdamUniform::new(n, hyper);
        let ub = uniform(d, "adam", &u);
        let bindings = AdamBindings {
            u: &ub,
            state: &state,
            alphas: &alphas,
            grads: &gb,
            params: &pb,
            m: &mb,
            v: &vb,
        };
        run_one(ctx, self.adam.dispatch(d, &bindings, elementwise_groups(n)))?;
        params.copy_from_slice(&ctx.read_vec::<f32>(&pb, 0, n)?);
        m.copy_from_slice(&ctx.read_vec::<f32>(&mb, 0, n)?);
        v.copy_from_slice(&ctx.read_vec::<f32>(&vb, 0, n)?);
        Ok(())
    }

    /// GPU twin of [`crate::cpu::relu::relu_forward`]. The ReLU pipelines are built here,
    /// on demand: training fuses ReLU into the GEMM and never dispatches them.
    pub fn relu_forward(&self, ctx: &GpuContext, x: &[f32]) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let relu = module(ctx, "relu", RELU_WGSL)?;
        let kernel = kernel::<ReluForwardBindings>(ctx, &relu, "relu_forward", "forward")?;
        let xb = storage_init(ctx, "x", bytemuck::cast_slice(x));
        let u = ReluUniform {
            n: x.len() as u32,
            ..Default::default()
        };
        let ub = uniform(d, "relu", &u);
        let bindings = ReluForwardBindings { u: &ub, x: &xb };
        run_one(
            ctx,
            kernel.dispatch(d, &bindings, elementwise_groups(x.len())),
        )?;
        ctx.read_vec::<f32>(&xb, 0, x.len())
    }

    /// GPU twin of [`crate::cpu::relu::relu_backward`].
    pub fn relu_backward(
        &self,
        ctx: &GpuContext,
        dy: &[f32],
        y: &[f32],
    ) -> Result<Vec<f32>, DeviceError> {
        let d = &ctx.device;
        let relu = module(ctx, "relu", RELU_WGSL)?;
        let kernel = kernel::<ReluBackwardBindings>(ctx, &relu, "relu_backward", "backward")?;
        let dyb = storage_init(ctx, "dy", bytemuck::cast_slice(dy));
        let yb = storage_init(ctx, "y", bytemuck::cast_slice(y));
        let dx = storage_zeroed(d, "dx", (dy.len() * 4) as u64);
        let u = ReluUniform {
            n: dy.len() as u32,
            ..Default::default()
        };
        let ub = uniform(d, "relu", &u);
        let bindings = ReluBackwardBindings {
            u: &ub,
            dy: &dyb,
            y: &yb,
            dx: &dx,
        };
        run_one(
            ctx,
            kernel.dispatch(d, &bindings, elementwise_groups(dy.len())),
        )?;
        ctx.read_vec::<f32>(&dx, 0, dy.len())
    }
}
