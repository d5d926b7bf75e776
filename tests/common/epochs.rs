//! An epoch stopped part-way and then continued, against the same epoch in one go, on any
//! backend: what the page's Stop and a resume rely on.

#![allow(dead_code)]

use mnist_gpu::backend::{Backend, StepProgress};
use mnist_gpu::host::block_on;
use mnist_gpu::settings::{steps_per_epoch, TrainOptions};
use mnist_gpu::train::{run_epoch, EpochOutcome};

/// One shuffled epoch at batch 37 (so a short last batch), with `--augment` or without.
pub fn one_epoch(augment: bool) -> TrainOptions {
    TrainOptions {
        epochs: 1,
        batch_size: 37,
        seed: 5,
        shuffle: true,
        augment,
    }
}

/// Trains `options`' epoch on `whole` in one go, and on `parts` (opened the same) stopped
/// after its first step and then continued from the totals the stop returned, through
/// the one epoch driver; asserts both end with the same parameters to the bit, the same
/// Adam state and the same evaluation. `what` names the case in a failure.
pub fn assert_stopped_and_continued_match(
    (whole, parts): (&mut dyn Backend, &mut dyn Backend),
    options: &TrainOptions,
    what: &str,
) {
    let base = StepProgress {
        steps_total: steps_per_epoch(whole.train_count(), options.batch_size),
        ..StepProgress::default()
    };
    let epoch = |b: &mut dyn Backend, base, stop: &(dyn Fn(usize) -> bool + Sync)| {
        block_on(run_epoch(b, options, 0, base, &mut |_| {}, stop)).unwrap()
    };
    let EpochOutcome::Finished(whole_epoch) = epoch(whole, base, &|_| false) else {
        panic!("{what}: the whole epoch stopped");
    };
    let EpochOutcome::Stopped(partial) = epoch(parts, base, &|done| done >= 1) else {
        panic!("{what}: the epoch did not stop");
    };
    assert!(
        (1..base.steps_total).contains(&partial.steps_done),
        "{what}: stopped after {partial:?}"
    );
    let EpochOutcome::Finished(parts_epoch) = epoch(parts, partial, &|_| false) else {
        panic!("{what}: the rest of the epoch stopped");
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&parts_epoch.params.trainable),
        bits(&whole_epoch.params.trainable),
        "{what}: parameters"
    );
    assert_eq!(
        block_on(parts.optim_state()).unwrap(),
        block_on(whole.optim_state()).unwrap(),
        "{what}: Adam's state"
    );
    assert_eq!(parts_epoch.eval, whole_epoch.eval, "{what}: evaluation");
}
