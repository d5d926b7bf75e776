//! MaxPool2D (Keras' `MaxPooling2D`): the largest value of each `size`×`size` window,
//! stride `size`, and its backward to the window's arg-max (`maxpool2d.wgsl`); the CPU
//! reference is [`cpu`].

#[cfg(not(target_arch = "wasm32"))]
mod check;
pub mod cpu;

use crate::device::kernel::{bindings, elementwise_groups, uniform, Dispatch, Work};

const FLAG_MASK: u32 = 1;

uniform! {
    /// Uniform block of `maxpool2d.wgsl`.
    pub struct PoolUniform as "Pool" {
        pub planes: u32, pub h: u32, pub w: u32, pub size: u32,
        pub out_h: u32, pub out_w: u32, pub flags: u32,
    }
}

bindings! {
    /// Both passes read the forward's input `x`; the backward also reads the output
    /// gradient `dy`. `out` is `y` or `dx`.
    PoolBindings(PoolUniform) for ["forward", "backward"] => {
        x: Read<f32> = 1, dy: Read<f32> = 2, out: ReadWrite<f32> = 3,
    }
}

family! {
    /// The MaxPool2D layer family.
    MaxPool2d: "maxpool2d" in "maxpool2d.wgsl", uniform PoolUniform => {
        forward: PoolBindings = "forward",
        backward: PoolBindings = "backward",
    }
}

/// One MaxPool2D layer on a batch: `batch` images of `channels`×`height`×`width`, pooled
/// in `size`×`size` windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub size: usize,
}

impl PoolShape {
    pub fn new(
        batch: usize,
        channels: usize,
        (height, width): (usize, usize),
        size: usize,
    ) -> Self {
        PoolShape {
            batch,
            channels,
            height,
            width,
            size,
        }
    }

    /// The output's height and width: whole windows only.
    pub fn out_size(&self) -> (usize, usize) {
        (self.height / self.size, self.width / self.size)
    }

    /// Input values in the batch.
    pub fn in_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Output values in the batch.
    pub fn out_len(&self) -> usize {
        let (oh, ow) = self.out_size();
        self.batch * self.channels * oh * ow
    }

    fn uniform(&self, flags: u32) -> PoolUniform {
        let (out_h, out_w) = self.out_size();
        let u = |v: usize| v as u32;
        PoolUniform {
            planes: u(self.batch * self.channels),
            h: u(self.height),
            w: u(self.width),
            size: u(self.size),
            out_h: u(out_h),
            out_w: u(out_w),
            flags,
            ..Default::default()
        }
    }
}

impl Pipelines {
    /// The forward on `s`: `y` from `x`.
    pub fn forward(&self, s: &PoolShape, x: &wgpu::Buffer, y: &wgpu::Buffer) -> Dispatch {
        // The forward does not read `dy`: `x` is bound in its place.
        let bindings = PoolBindings { x, dy: x, out: y };
        let groups = elementwise_groups(s.out_len());
        // A comparison per input value; the input read, the output written.
        let (inputs, outputs) = (s.in_len() as f64, s.out_len() as f64);
        let work = Work::new(inputs, inputs + outputs);
        self.forward
            .dispatch(&s.uniform(0), &bindings, groups)
            .with_work(work)
    }

    /// The backward on `s`: `dx` from the forward's input `x` and the output gradient
    /// `dy`. With `masked`, `x` is the ReLU output of the layer below, and the gradient
    /// is zeroed where it is ≤ 0.
    pub fn backward(
        &self,
        s: &PoolShape,
        [x, dy, dx]: [&wgpu::Buffer; 3],
        masked: bool,
    ) -> Dispatch {
        let u = s.uniform(if masked { FLAG_MASK } else { 0 });
        let bindings = PoolBindings { x, dy, out: dx };
        // A comparison per input value; x and dy read, dx written.
        let (inputs, outputs) = (s.in_len() as f64, s.out_len() as f64);
        let work = Work::new(inputs, 2.0 * inputs + outputs);
        self.backward
            .dispatch(&u, &bindings, elementwise_groups(s.in_len()))
            .with_work(work)
    }
}
