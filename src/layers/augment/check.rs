//! The augmentation family's agreement cases: the GPU's bytes against [`super::cpu`]'s,
//! exactly, on images of random ink (most pixels 0, as in MNIST), on saturated images
//! (the largest sums the integer arithmetic meets), and on a bench row of 4096 images.

use super::cpu::{self, AugmentKey, PIXELS};
use super::{warp_table_words, AugmentBindings};
use crate::device::kernel::{pack_pixels, run_one, storage_init, storage_zeroed};
use crate::layers::check::{rng, Case, Outputs};
use rand::Rng;
use std::rc::Rc;

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (count, seed, epoch)) in [(37, 42, 0), (5, 7, 3), (4096, 42, 9)]
        .into_iter()
        .enumerate()
    {
        let images = Rc::new(random_ink(&mut rng(950 + i as u64), count));
        let key = AugmentKey::new(seed, epoch);
        let case = augment(
            format!("augment {count} images, epoch {epoch}"),
            images,
            key,
        );
        cases.push(if count == 4096 { case.bench() } else { case });
    }
    let saturated = Rc::new(vec![255u8; 9 * PIXELS]);
    cases.push(augment(
        "augment 9 saturated images".into(),
        saturated,
        AugmentKey::new(1, 1),
    ));
    cases
}

/// `count` images with about a fifth of their pixels inked at random levels.
fn random_ink(rng: &mut impl Rng, count: usize) -> Vec<u8> {
    (0..count * PIXELS)
        .map(|_| {
            if rng.random_bool(0.2) {
                rng.random()
            } else {
                0
            }
        })
        .collect()
}

fn augment(name: String, images: Rc<Vec<u8>>, key: AugmentKey) -> Case {
    let cpu_images = images.clone();
    let cpu = move || -> Outputs {
        let mut out = vec![0; cpu_images.len()];
        cpu::augment_set(&cpu_images, key, &cpu::warp_table(), &mut out);
        vec![("out", out.into_iter().map(f32::from).collect())]
    };
    // Exact: integer arithmetic on both sides.
    Case::new(name, 0.0, cpu, move |ctx, p| {
        let words = images.len() / 4;
        let bindings = AugmentBindings {
            warps: &storage_init(ctx, "warps", bytemuck::cast_slice(&warp_table_words())),
            images: &storage_init(ctx, "images", bytemuck::cast_slice(&pack_pixels(&images))),
            out: &storage_zeroed(&ctx.device, "out", (words * 4) as u64),
        };
        run_one(
            ctx,
            p.augment.augment(images.len() / PIXELS, key, &bindings),
        )?;
        let packed: Vec<u32> = ctx.read_vec(bindings.out, 0, words)?;
        let bytes = packed.iter().flat_map(|w| w.to_le_bytes());
        Ok(vec![("out", bytes.map(f32::from).collect())])
    })
}
