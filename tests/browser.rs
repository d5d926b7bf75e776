//! The page in a real browser: `web/build.sh` builds the site, it is served on
//! 127.0.0.1, and headless Chromium (through Debian's `chromedriver`) trains one epoch on
//! 2,000 samples, on WebGPU (SwiftShader here) and with WebGPU disabled (the CPU path
//! compiled to wasm). Checked: the device line, the epoch's metrics against
//! `mnist-gpu train --cpu-fallback` (within 1e-4), a digit drawn on the canvas, and the
//! downloaded model evaluated by `mnist-gpu eval`.
//!
//! The site is built into `target/tmp/web-dist` (log: `target/tmp/web-build.log`). One
//! Chromium runs at a time; each test's chromedriver logs, with Chromium's own stderr, to
//! `target/tmp/chromedriver-NAME.log`, and a failure shows that log's end. Without
//! Chromium, or where the page cannot be built, the tests print a `SKIPPED:` line saying
//! why, except under CI (`CI` set), where they fail.

mod common;

use common::browser::{serve, tail, which, Driver, Session};
use common::cli::{succeed, text};
use common::skip::skip;
use mnist_gpu::data::Mnist;
use mnist_gpu::train::EpochRecord;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const QUERY: &str = "?epochs=1&train-limit=2000&test-limit=500&autostart=1";
/// Chromium's WebGPU through SwiftShader, which needs no GPU or display.
const WEBGPU_ARGS: [&str; 5] = [
    "--headless=new",
    "--no-sandbox",
    "--enable-unsafe-webgpu",
    "--enable-unsafe-swiftshader",
    "--window-size=1100,1900",
];
const NO_WEBGPU_ARGS: [&str; 4] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-features=WebGPU",
    "--window-size=1100,1900",
];

/// The built site's port and chromedriver, once per test binary; `None` to skip (after
/// saying why, see `common::skip`).
fn site() -> Option<&'static (u16, PathBuf)> {
    static SITE: OnceLock<Option<(u16, PathBuf)>> = OnceLock::new();
    SITE.get_or_init(|| {
        let browser = which(&["chromium", "chromium-browser", "google-chrome"]);
        let Some(driver) = which(&["chromedriver"]).filter(|_| browser.is_some()) else {
            let why = "no chromium and chromedriver on PATH";
            skip(
                "the browser tests",
                why,
                "Debian: apt-get install chromium chromium-driver",
            );
            return None;
        };
        let dist = build_site()?;
        let wasm = dist.join("mnist_gpu_bg.wasm");
        let size = std::fs::metadata(&wasm).expect("the built module").len();
        assert!(
            size <= 3_000_000,
            "the page's wasm is {size} bytes, over 3 MB"
        );
        Some((serve(&dist), driver))
    })
    .as_ref()
}

/// `web/build.sh` into `target/tmp/web-dist` (tests write nothing in the checkout); the
/// folder, or `None` to skip when the page cannot be built here.
fn build_site() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dist = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-dist");
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-build.log");
    let output = std::fs::File::create(&log).expect("create the build log");
    let status = Command::new("bash")
        .arg(root.join("web/build.sh"))
        .env("WEB_DIST", &dist)
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .status();
    let failure = match status {
        Ok(status) if status.success() => return Some(dist),
        Ok(status) => format!("web/build.sh failed ({status}): {}", tail(&log, 1)),
        Err(e) => format!("cannot run bash web/build.sh: {e}"),
    };
    let fix = format!(
        "its log is {}; it needs rustup and cargo install to reach the package registry",
        log.display()
    );
    skip("the browser tests", &failure, &fix);
    None
}

/// One Chromium at a time: the tests in this file run in parallel threads, and Chromium
/// starts (and SwiftShader trains) far slower when several share two cores.
fn one_browser_at_a_time() -> MutexGuard<'static, ()> {
    static BROWSER: Mutex<()> = Mutex::new(());
    BROWSER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// chromedriver for `test`, logging to `target/tmp/chromedriver-TEST.log`.
fn start_driver(chromedriver: &Path, test: &str) -> Driver {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chromedriver-{test}.log"));
    Driver::start(chromedriver, &log)
}

/// The page after training, as a PNG: `target/tmp/browser.png`, or the README's
/// `docs/browser.png` when `MNIST_GPU_UPDATE_SCREENSHOT` is set (so a test run does not
/// change a tracked file).
fn save_screenshot(session: &Session) {
    let path = match std::env::var_os("MNIST_GPU_UPDATE_SCREENSHOT") {
        Some(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/browser.png"),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser.png"),
    };
    let png = session.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    std::fs::write(&path, png).unwrap();
}

/// Wait for the page's `done …` (or `error …`) line; every `mnist-gpu: ` line so far.
fn wait_for_run(session: &Session) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let lines: Vec<String> =
            match session.execute("return window.mnistGpuLog || [];", json!([])) {
                Value::Array(list) => list
                    .iter()
                    .filter_map(|l| l.as_str().map(String::from))
                    .collect(),
                _ => Vec::new(),
            };
        if let Some(error) = lines.iter().find(|l| l.starts_with("error ")) {
            panic!("the page failed: {error}\n{lines:#?}");
        }
        if lines.iter().any(|l| l.starts_with("done ")) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not finish in 600 s: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The epoch record the page printed.
fn page_record(lines: &[String]) -> EpochRecord {
    let line = lines
        .iter()
        .find(|l| l.starts_with('{'))
        .expect("an epoch's metrics line");
    serde_json::from_str(line).expect("the metrics line is an EpochRecord")
}

/// `mnist-gpu train --cpu-fallback` on the same subset: its epoch record.
fn cli_record() -> EpochRecord {
    cli_records(1).remove(0)
}

/// `mnist-gpu train --cpu-fallback` for `epochs` epochs on the same subset: its records.
fn cli_records(epochs: usize) -> Vec<EpochRecord> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let metrics = dir.path().join("metrics.jsonl");
    let epochs = epochs.to_string();
    let args = [
        "train",
        "--cpu-fallback",
        "--epochs",
        &epochs,
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--out-dir".into(),
        out.display().to_string(),
        "--metrics".into(),
        metrics.display().to_string(),
    ]);
    succeed(&args);
    let text = std::fs::read_to_string(metrics).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_agrees(page: &EpochRecord, cli: &EpochRecord) {
    for (what, a, b) in [
        ("loss", page.loss, cli.loss),
        ("accuracy", page.accuracy, cli.accuracy),
        ("val_loss", page.val_loss, cli.val_loss),
        ("val_accuracy", page.val_accuracy, cli.val_accuracy),
    ] {
        assert!((a - b).abs() <= 1e-4, "{what}: page {a}, CLI {b}");
    }
}

/// Draw test image `index` on the canvas as horizontal pointer strokes over its ink
/// (10 canvas pixels per MNIST pixel); the page's top-3 afterwards.
fn draw_test_digit(session: &Session, index: usize) -> (u8, Value) {
    let test = Mnist::embedded(Some(1), Some(index + 1)).unwrap().test;
    let image = test.image(index);
    let mut strokes = Vec::new();
    for y in 0..28 {
        let mut x = 0;
        while x < 28 {
            if image[y * 28 + x] < 128 {
                x += 1;
                continue;
            }
            let start = x;
            while x < 28 && image[y * 28 + x] >= 128 {
                x += 1;
            }
            strokes.push(json!([start * 10 + 5, (x - 1) * 10 + 5, y * 10 + 5]));
        }
    }
    let script = r#"
        const canvas = document.getElementById('draw'), r = canvas.getBoundingClientRect();
        window.mnistGpuLog.length = 0;
        const fire = (type, x, y) => canvas.dispatchEvent(new PointerEvent(type,
            { clientX: r.left + x, clientY: r.top + y, bubbles: true, pointerType: 'mouse' }));
        for (const [x0, x1, y] of arguments[0]) {
            fire('pointerdown', x0, y); fire('pointermove', x1, y); fire('pointerup', x1, y);
        }"#;
    session.execute(script, json!([strokes]));
    std::thread::sleep(Duration::from_secs(3));
    let lines = session.execute("return window.mnistGpuLog;", json!([]));
    let last = lines.as_array().and_then(|l| {
        l.iter()
            .rev()
            .find_map(|l| l.as_str()?.strip_prefix("drawn ").map(String::from))
    });
    let top3: Value = serde_json::from_str(&last.expect("a prediction of the drawing")).unwrap();
    (test.labels[index], top3)
}

/// The page's model file, evaluated by `mnist-gpu eval` on the same 500 test samples:
/// its accuracy in percent as printed.
fn eval_downloaded_model(session: &Session) -> String {
    let bytes = session.execute(
        "document.getElementById('save').click(); return Array.from(window.mnistGpuModel);",
        json!([]),
    );
    let bytes: Vec<u8> = bytes
        .as_array()
        .expect("model bytes")
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    std::fs::write(&model, bytes).unwrap();
    let out = succeed(&[
        "eval",
        "--cpu-fallback",
        "--test-limit",
        "500",
        "--model",
        model.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    let accuracy = stdout.split("accuracy: ").nth(1).expect("an accuracy line");
    accuracy.split('%').next().unwrap().to_string()
}

#[test]
fn the_page_trains_on_webgpu_like_the_cli_and_its_model_draws_and_evaluates() {
    let Some((port, chromedriver)) = site() else {
        return;
    };
    let _one = one_browser_at_a_time();
    let driver = start_driver(chromedriver, "webgpu");
    let session = driver.session(&WEBGPU_ARGS);
    session.goto(&format!("http://127.0.0.1:{port}/{QUERY}"));
    let lines = wait_for_run(&session);
    let device = lines
        .iter()
        .find(|l| l.starts_with("device "))
        .expect("a device line");
    assert!(device.contains("WebGPU"), "not on WebGPU: {device}");
    let page = page_record(&lines);
    assert_agrees(&page, &cli_record());
    save_screenshot(&session);
    let (label, top3) = draw_test_digit(&session, 0);
    assert_eq!(
        top3[0][0].as_u64(),
        Some(label as u64),
        "drew a {label}, the page read {top3}"
    );
    let accuracy = eval_downloaded_model(&session);
    assert_eq!(
        accuracy,
        format!("{:.2}", page.val_accuracy * 100.0),
        "eval of the page's model"
    );
}

#[test]
fn without_webgpu_the_page_trains_on_the_cpu_path() {
    let Some((port, chromedriver)) = site() else {
        return;
    };
    let _one = one_browser_at_a_time();
    let driver = start_driver(chromedriver, "no-webgpu");
    let session = driver.session(&NO_WEBGPU_ARGS);
    session.goto(&format!("http://127.0.0.1:{port}/{QUERY}"));
    let lines = wait_for_run(&session);
    let device = lines
        .iter()
        .find(|l| l.starts_with("device "))
        .expect("a device line");
    assert!(device.contains("cpu"), "expected the CPU path: {device}");
    assert_agrees(&page_record(&lines), &cli_record());
    check_loading_a_cli_model(&session);
}

/// A model trained by the CLI, loaded into the page, evaluates there (on the page's 500
/// test samples) to the accuracy `mnist-gpu eval` prints for it.
fn check_loading_a_cli_model(session: &Session) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out = out.to_str().unwrap();
    let train = [
        "train",
        "--cpu-fallback",
        "--epochs",
        "2",
        "--train-limit",
        "3000",
    ];
    succeed(&[&train[..], &["--test-limit", "500", "--out-dir", out]].concat());
    let model = dir.path().join("run/model.safetensors");
    let eval = ["eval", "--cpu-fallback", "--test-limit", "500", "--model"];
    let stdout = text(&succeed(&[&eval[..], &[model.to_str().unwrap()]].concat()).stdout);
    let cli_accuracy = stdout.split("accuracy: ").nth(1).expect("an accuracy line");
    let cli_accuracy = cli_accuracy.split('%').next().unwrap();
    session.upload("#load", &model);
    let loaded = "return (window.mnistGpuLog || []).some((l) => l.startsWith('loaded '));";
    wait_until(session, "the model to load", loaded);
    let lines = log_lines(session);
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix("loaded "))
        .unwrap();
    let result: Value = serde_json::from_str(line).unwrap();
    let page_accuracy = format!("{:.2}", result["accuracy"].as_f64().unwrap() * 100.0);
    assert_eq!(
        page_accuracy, cli_accuracy,
        "the CLI's model evaluated in the page"
    );
}

/// The page's log lines so far.
fn log_lines(session: &Session) -> Vec<String> {
    match session.execute("return window.mnistGpuLog || [];", json!([])) {
        Value::Array(list) => list
            .iter()
            .filter_map(|l| l.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// Poll the page until `script` returns true (30 s at most).
fn wait_until(session: &Session, what: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while session.execute(script, json!([])) != json!(true) {
        assert!(
            Instant::now() < deadline,
            "waited 30 s for {what}: {:#?}",
            log_lines(session)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stop_and_resume_on_webgpu_give_the_uninterrupted_metrics() {
    let Some((port, chromedriver)) = site() else {
        return;
    };
    let _one = one_browser_at_a_time();
    let driver = start_driver(chromedriver, "stop-resume");
    let session = driver.session(&WEBGPU_ARGS);
    let query = "?epochs=2&train-limit=2000&test-limit=500&autostart=1";
    session.goto(&format!("http://127.0.0.1:{port}/{query}"));
    // Stop once some of epoch 1's steps are done, then resume.
    let running = "return /^Epoch 1: [1-9]/.test(document.getElementById('progress').textContent);";
    wait_until(&session, "epoch 1 under way", running);
    session.execute("document.getElementById('stop').click();", json!([]));
    let stopped = "return (window.mnistGpuLog || []).some((l) => l.startsWith('stopped'));";
    wait_until(&session, "the stop", stopped);
    assert!(
        !log_lines(&session).iter().any(|l| l.starts_with('{')),
        "the stop came after epoch 1 ended"
    );
    session.execute("document.getElementById('resume').click();", json!([]));
    let lines = wait_for_run(&session);
    let records: Vec<EpochRecord> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cli = cli_records(2);
    assert_eq!(records.len(), 2, "{lines:#?}");
    for (page, cli) in records.iter().zip(&cli) {
        assert_agrees(page, cli);
    }
}
