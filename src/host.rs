//! The host's event loop, as async code sees it. Training is async so that one epoch
//! driver serves the command line and the browser page:
//!
//! - **natively** nothing else needs the thread: [`yield_now`] and [`yield_if_due`] are
//!   ready at once, and the command line waits for a whole run in [`block_on`];
//! - **in a browser** the page's code must return to the event loop for the GPU's
//!   promises to resolve and for the page to repaint, so they wait for a
//!   `setTimeout(0)` turn.

use std::future::Future;

/// Work between two yields to the browser at most (then it repaints, runs its timers and
/// Stop can be pressed).
#[cfg(target_arch = "wasm32")]
const YIELD_EVERY_MS: u128 = 20;

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// When Rust code last gave the browser its turn.
    static LAST_YIELD: std::cell::Cell<Option<web_time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Give the host's event loop one turn: in a browser a macrotask turn (a resolved
/// promise alone would stay in the microtask queue and let neither the GPU's callbacks
/// nor a repaint run); natively nothing.
pub async fn yield_now() {
    #[cfg(target_arch = "wasm32")]
    {
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            if let Some(window) = web_sys::window() {
                let _ = window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
            }
        });
        let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        LAST_YIELD.with(|last| last.set(Some(web_time::Instant::now())));
    }
}

/// [`yield_now`] when the code has run for [`YIELD_EVERY_MS`] since the last turn (the
/// CPU path asks between steps and between parts of its evaluation); natively nothing.
pub async fn yield_if_due() {
    #[cfg(target_arch = "wasm32")]
    {
        let due = LAST_YIELD.with(|last| {
            last.get()
                .is_none_or(|at| at.elapsed().as_millis() >= YIELD_EVERY_MS)
        });
        if due {
            yield_now().await;
        }
    }
}

/// The one place native code waits for a future (a training run, an evaluation, a
/// readback): nothing else needs the thread meanwhile, and the GPU's readbacks complete
/// while the future itself polls the device.
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: Future>(future: F) -> F::Output {
    pollster::block_on(future)
}

/// A boxed future that borrows for `'a`: what [`crate::backend::Backend`]'s methods
/// return (the page's futures are not `Send`: wgpu's browser objects are not).
pub type Task<'a, T> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<T>> + 'a>>;
