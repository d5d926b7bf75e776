//! The built-in MNIST, loaded once per test binary.

#![allow(dead_code)]

use mnist_gpu::data::{builtin_dir, Dataset, Mnist};
use std::sync::OnceLock;

/// The built-in MNIST (both splits).
pub fn builtin() -> &'static Mnist {
    static DATA: OnceLock<Mnist> = OnceLock::new();
    DATA.get_or_init(|| Mnist::load(&builtin_dir()).expect("the built-in MNIST loads"))
}

/// The built-in MNIST test set.
pub fn test_set() -> &'static Dataset {
    &builtin().test
}
