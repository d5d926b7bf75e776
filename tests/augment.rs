//! `train --augment` on the CPU trainer: each epoch it trains on exactly the images
//! `augment_set` makes from the originals (for the MLP's sparse first layer, its dense
//! reference path and the layer path of the convnet), evaluation never sees them, and
//! the README's picture of them is what the code makes. (The GPU kernel's bytes and the
//! GPU trainer are checked in `tests/gpu_agreement.rs`, resume in `tests/faults.rs`.)

mod common;

use common::cli::bits;
use common::data::builtin;
use common::png::png_bytes;
use image::{DynamicImage, GrayImage, Luma};
use mnist_gpu::backend::Backend;
use mnist_gpu::cpu::CpuBackend;
use mnist_gpu::data::Mnist;
use mnist_gpu::host::block_on;
use mnist_gpu::layers::augment::cpu::{augment_set, warp_table, AugmentKey, PIXELS, SIDE};
use mnist_gpu::model::{Hyper, ModelConfig, Params, KERAS_CONVNET};
use mnist_gpu::train::epoch_order;
use std::path::Path;

fn subset(train: usize, test: usize) -> Mnist {
    Mnist {
        train: builtin().train.clone().truncated(train),
        test: builtin().test.clone().truncated(test),
    }
}

/// `data` with its training images replaced by their augmentation under `key`.
fn augmented(data: &Mnist, key: AugmentKey) -> Mnist {
    let mut out = data.clone();
    augment_set(
        &data.train.images,
        key,
        &warp_table(),
        &mut out.train.images,
    );
    out
}

/// A trainer of `config` on `data`, on the sparse first-layer path or not (the MLP).
fn trainer(config: &ModelConfig, data: &Mnist, sparse: bool) -> CpuBackend {
    let mut backend = CpuBackend::new(Params::init(config, 4), Hyper::default(), data.clone());
    if config.is_mlp() {
        backend.set_sparse_input(sparse);
    }
    backend
}

/// Two epochs with `augment` before each (the second from the originals, not from the
/// first epoch's images) train the bits that two epochs on images augmented beforehand
/// give, and the evaluation after them is the same: the test images are left alone.
#[test]
fn each_epoch_trains_on_the_originals_augmented_under_its_key() {
    let data = subset(300, 100);
    let convnet = ModelConfig {
        layers: mnist_gpu::model::parse_layers(KERAS_CONVNET).unwrap(),
        raw_pixels: false,
    };
    let models = [
        (ModelConfig::default(), true),
        (ModelConfig::default(), false),
        (convnet, false),
    ];
    for (config, sparse) in models {
        let what = format!("{:?}, sparse {sparse}", config.layers);
        let mut under_test = trainer(&config, &data, sparse);
        let mut reference: Option<CpuBackend> = None;
        for epoch in 0..2 {
            let key = AugmentKey::new(8, epoch);
            let order = epoch_order(data.train.len(), 8, epoch, true);
            block_on(under_test.augment(key)).unwrap();
            block_on(under_test.train_epoch(&order, 32, &mut |_| {})).unwrap();
            // The reference: a trainer on the images augmented beforehand, from where the
            // last epoch's left the model.
            let mut fresh = trainer(&config, &augmented(&data, key), sparse);
            if let Some(last) = &mut reference {
                let params = block_on(last.params()).unwrap();
                let optim = block_on(last.optim_state()).unwrap();
                fresh.load(&params, Some(&optim)).unwrap();
            }
            block_on(fresh.train_epoch(&order, 32, &mut |_| {})).unwrap();
            reference = Some(fresh);
        }
        let mut reference = reference.expect("trained");
        let (a, b) = (
            block_on(under_test.params()).unwrap(),
            block_on(reference.params()).unwrap(),
        );
        assert!(bits(&a) == bits(&b), "{what}: the parameters differ");
        let (a, b) = (
            block_on(under_test.evaluate()).unwrap(),
            block_on(reference.evaluate()).unwrap(),
        );
        assert_eq!(a, b, "{what}: the evaluation differs");
    }
}

/// The README's picture: the first 12 training images, then as `--augment` makes them in
/// epochs 1, 2 and 3 of a run seeded 42, each row one epoch.
fn readme_picture() -> Vec<u8> {
    const COUNT: usize = 12;
    let images = &builtin().train.images[..COUNT * PIXELS];
    let mut rows = vec![images.to_vec()];
    for epoch in 0..3 {
        let mut out = vec![0; images.len()];
        augment_set(images, AugmentKey::new(42, epoch), &warp_table(), &mut out);
        rows.push(out);
    }
    const CELL: u32 = SIDE as u32 + 2;
    let picture = GrayImage::from_fn(CELL * COUNT as u32, CELL * 4, |x, y| {
        let (image, row) = ((x / CELL) as usize, (y / CELL) as usize);
        let (px, py) = ((x % CELL) as usize, (y % CELL) as usize);
        if px >= SIDE || py >= SIDE {
            return Luma([96]);
        }
        Luma([255 - rows[row][image * PIXELS + py * SIDE + px]])
    });
    let big = image::imageops::resize(
        &picture,
        picture.width() * 3,
        picture.height() * 3,
        image::imageops::FilterType::Nearest,
    );
    png_bytes(&DynamicImage::ImageLuma8(big))
}

const README_PICTURE: &str = "docs/augment.png";

#[test]
fn the_readme_picture_is_what_augment_makes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(README_PICTURE);
    let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{README_PICTURE}: {e}"));
    assert!(
        committed == readme_picture(),
        "{README_PICTURE} is out of date: cargo test --test augment -- --ignored generate"
    );
}

#[test]
#[ignore = "regenerates the committed docs/augment.png"]
fn generate_readme_picture() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(README_PICTURE);
    std::fs::write(path, readme_picture()).unwrap();
}
