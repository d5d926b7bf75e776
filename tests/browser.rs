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
use mnist_gpu::backend::EpochRecord;
use mnist_gpu::data::Mnist;
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

/// Run `test` in a fresh headless Chromium started with `args` (one at a time), with the
/// built site's address (`http://127.0.0.1:PORT/`); chromedriver logs to
/// `target/tmp/chromedriver-NAME.log`. Skips where [`site`] does.
fn in_browser(name: &str, args: &[&str], test: impl FnOnce(&Session, &str)) {
    let Some((port, chromedriver)) = site() else {
        return;
    };
    let _one = one_browser_at_a_time();
    let driver = start_driver(chromedriver, name);
    let session = driver.session(args);
    test(&session, &format!("http://127.0.0.1:{port}/"));
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

/// The page's `device …` line.
fn device_line(lines: &[String]) -> &str {
    lines
        .iter()
        .find(|l| l.starts_with("device "))
        .expect("a device line")
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
    let epochs = epochs.to_string();
    cli_run(&[
        "--epochs",
        &epochs,
        "--train-limit",
        "2000",
        "--test-limit",
        "500",
    ])
}

/// `mnist-gpu train --cpu-fallback` with `flags`: its epoch records.
fn cli_run(flags: &[&str]) -> Vec<EpochRecord> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let metrics = dir.path().join("metrics.jsonl");
    let mut args: Vec<String> = ["train", "--cpu-fallback"]
        .iter()
        .chain(flags)
        .map(|s| s.to_string())
        .collect();
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

/// The page's model file, evaluated by `mnist-gpu eval` on the same `test_limit` test
/// samples: its accuracy in percent as printed.
fn eval_downloaded_model(session: &Session, test_limit: &str) -> String {
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
        test_limit,
        "--model",
        model.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    let accuracy = stdout.split("accuracy: ").nth(1).expect("an accuracy line");
    accuracy.split('%').next().unwrap().to_string()
}

#[test]
fn the_page_trains_on_webgpu_like_the_cli_and_its_model_draws_and_evaluates() {
    in_browser("webgpu", &WEBGPU_ARGS, |session, base| {
        session.goto(&format!("{base}{QUERY}"));
        let lines = wait_for_run(session);
        let device = device_line(&lines);
        assert!(device.contains("WebGPU"), "not on WebGPU: {device}");
        let page = page_record(&lines);
        assert_agrees(&page, &cli_record());
        save_screenshot(session);
        let (label, top3) = draw_test_digit(session, 0);
        assert_eq!(
            top3[0][0].as_u64(),
            Some(label as u64),
            "drew a {label}, the page read {top3}"
        );
        let accuracy = eval_downloaded_model(session, "500");
        assert_eq!(
            accuracy,
            format!("{:.2}", page.val_accuracy * 100.0),
            "eval of the page's model"
        );
    });
}

/// The page offers the convnet: chosen in the URL, it trains on WebGPU with the
/// convnet's layers and dropout, on augmented images (the augment box), and gives the
/// CLI's metrics for the same flags, and its
/// downloaded model evaluates to the page's accuracy; a convnet from the command line
/// loads, evaluates to `eval`'s accuracy and reads a drawn digit.
#[test]
fn the_page_trains_the_convnet_on_webgpu_like_the_cli() {
    in_browser("convnet", &WEBGPU_ARGS, |session, base| {
        let flags = "epochs=1&batch-size=32&train-limit=320&test-limit=200&augment=1";
        session.goto(&format!("{base}?model=convnet&{flags}&autostart=1"));
        let lines = wait_for_run(session);
        assert!(device_line(&lines).contains("WebGPU"), "{lines:#?}");
        let page = page_record(&lines);
        eprintln!(
            "the convnet in the page: {:.2} s for 320 samples ({:.0} samples/s)",
            page.seconds, page.samples_per_second
        );
        let cli = cli_run(&[
            "--model",
            "convnet",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--train-limit",
            "320",
            "--test-limit",
            "200",
            "--augment",
        ]);
        assert_agrees(&page, &cli[0]);
        let accuracy = eval_downloaded_model(session, "200");
        assert_eq!(accuracy, format!("{:.2}", page.val_accuracy * 100.0));
        // A convnet trained by the command line loads, evaluates as `eval` does, and
        // reads a digit drawn on the canvas.
        check_loading_a_cli_model(session, &["--model", "convnet"], "200");
        let (label, top3) = draw_test_digit(session, 0);
        assert_eq!(
            top3[0][0].as_u64(),
            Some(label as u64),
            "drew a {label}: {top3}"
        );
    });
}

#[test]
fn without_webgpu_the_page_trains_on_the_cpu_path() {
    in_browser("no-webgpu", &NO_WEBGPU_ARGS, |session, base| {
        session.goto(&format!("{base}{QUERY}"));
        let lines = wait_for_run(session);
        let device = device_line(&lines);
        assert!(device.contains("cpu"), "expected the CPU path: {device}");
        assert_agrees(&page_record(&lines), &cli_record());
        check_loading_a_cli_model(session, &[], "500");
    });
}

/// A model trained by the CLI (with the `model` flags), loaded into the page, evaluates
/// there (on the page's `test_limit` test samples) to the accuracy `mnist-gpu eval`
/// prints for it.
fn check_loading_a_cli_model(session: &Session, model: &[&str], test_limit: &str) {
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
    succeed(
        &[
            &train[..],
            model,
            &["--test-limit", "500", "--out-dir", out],
        ]
        .concat(),
    );
    let model = dir.path().join("run/model.safetensors");
    let eval = [
        "eval",
        "--cpu-fallback",
        "--test-limit",
        test_limit,
        "--model",
    ];
    let stdout = text(&succeed(&[&eval[..], &[model.to_str().unwrap()]].concat()).stdout);
    let cli_accuracy = stdout.split("accuracy: ").nth(1).expect("an accuracy line");
    let cli_accuracy = cli_accuracy.split('%').next().unwrap();
    session.upload("#load", &model);
    let line = wait_for_line(session, "loaded ", "the model to load");
    let result: Value = serde_json::from_str(&line).unwrap();
    let page_accuracy = format!("{:.2}", result["accuracy"].as_f64().unwrap() * 100.0);
    assert_eq!(
        page_accuracy, cli_accuracy,
        "the CLI's model evaluated in the page"
    );
}

/// Wait (30 s at most) for the page's first log line starting with `prefix`; the rest of
/// that line.
fn wait_for_line(session: &Session, prefix: &str, what: &str) -> String {
    let script =
        format!("return (window.mnistGpuLog || []).some((l) => l.startsWith('{prefix}'));");
    wait_until(session, what, &script);
    let lines = log_lines(session);
    let line = lines.iter().find_map(|l| l.strip_prefix(prefix));
    line.expect("the line just seen").to_string()
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
    wait_until_for(session, what, script, 30);
}

/// Poll the page until `script` returns true (`seconds` at most).
fn wait_until_for(session: &Session, what: &str, script: &str, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while session.execute(script, json!([])) != json!(true) {
        assert!(
            Instant::now() < deadline,
            "waited {seconds} s for {what}: {:#?}",
            log_lines(session)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stop_and_resume_on_webgpu_give_the_uninterrupted_metrics() {
    in_browser("stop-resume", &WEBGPU_ARGS, |session, base| {
        let query = "?epochs=2&train-limit=2000&test-limit=500&autostart=1";
        session.goto(&format!("{base}{query}"));
        // Stop once some of epoch 1's steps are done, then resume.
        let running =
            "return /^Epoch 1: [1-9]/.test(document.getElementById('progress').textContent);";
        wait_until(session, "epoch 1 under way", running);
        session.execute("document.getElementById('stop').click();", json!([]));
        let stopped = "return (window.mnistGpuLog || []).some((l) => l.startsWith('stopped'));";
        wait_until(session, "the stop", stopped);
        assert!(
            !log_lines(session).iter().any(|l| l.starts_with('{')),
            "the stop came after epoch 1 ended"
        );
        session.execute("document.getElementById('resume').click();", json!([]));
        let lines = wait_for_run(session);
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
    });
}

/// Load `query` in `session` and wait for the page's first `error …` line (60 s at most):
/// that line, after checking that nothing trained.
fn refusal_of(session: &Session, base: &str, query: &str) -> String {
    session.goto(&format!("{base}{query}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = log_lines(session);
        if let Some(error) = lines.iter().find_map(|l| l.strip_prefix("error ")) {
            assert!(
                !lines
                    .iter()
                    .any(|l| l.starts_with('{') || l.starts_with("done ")),
                "{query}: trained before refusing: {lines:#?}"
            );
            return error.to_string();
        }
        assert!(
            lines.iter().all(|l| !l.starts_with("done ")),
            "{query}: finished instead of refusing: {lines:#?}"
        );
        assert!(
            Instant::now() < deadline,
            "{query}: no refusal in 60 s: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The settings the page refuses before training, each with words its error must contain.
const REFUSALS: [(&str, &str); 16] = [
    ("epochs=0", "the epochs field ('0'): must be at least 1"),
    (
        "epochs=NaN",
        "the epochs field ('NaN'): 'NaN' is not a positive whole number",
    ),
    ("epochs=1.5", "the epochs field ('1.5')"),
    (
        "batch-size=0",
        "the batch size field ('0'): must be at least 1",
    ),
    (
        "lr=0",
        "the learning rate field ('0'): must be a finite number above 0",
    ),
    ("lr=-1", "the learning rate field ('-1')"),
    (
        "lr=fast",
        "the learning rate field ('fast'): 'fast' is not a number",
    ),
    (
        "train-limit=0",
        "the train limit field ('0'): must be at least 1",
    ),
    (
        "test-limit=0",
        "the test limit field ('0'): must be at least 1",
    ),
    (
        "hidden=0",
        "the hidden field ('0'): layer widths must be at least 1",
    ),
    (
        "hidden=",
        "the hidden field (''): expected a comma-separated list",
    ),
    (
        "hidden=100000",
        "layer width 100000 is too large (at most 65536)",
    ),
    ("hidden=64,abc", "'abc' is not a layer width"),
    (
        "model=resnet",
        "the model field ('resnet'): unknown model 'resnet' (expected mlp or convnet)",
    ),
    (
        "model=convnet&hidden=64",
        "the hidden field ('64') sets the MLP's widths",
    ),
    (
        "seed=-1",
        "the seed field ('-1'): '-1' is not a whole number from 0",
    ),
];

/// The page refuses what the command line refuses, with the field, the rule and the value
/// in its words, and trains nothing; a seed above 2^53 gives the CLI's run; a limit above
/// the data gets the CLI's note; a run that diverges ends as an error, not as done.
#[test]
fn the_page_refuses_what_the_cli_refuses() {
    in_browser("refusals", &WEBGPU_ARGS, |session, base| {
        assert_each_bad_setting_is_refused(session, base);
        assert_a_seed_above_2_53_gives_the_cli_run(session, base);
        assert_a_limit_above_the_data_gets_the_cli_note(session, base);
        assert_divergence_ends_as_an_error(session, base);
    });
}

/// Each of [`REFUSALS`] is refused in the page's words, and Train stays enabled.
fn assert_each_bad_setting_is_refused(session: &Session, base: &str) {
    let rest = "&train-limit=500&test-limit=200&cpu-fallback=1&autostart=1";
    for (setting, expected) in REFUSALS {
        let error = refusal_of(session, base, &format!("?{setting}{rest}"));
        assert!(error.contains(expected), "{setting}: {error}");
        let train = "return document.getElementById('train').disabled;";
        assert_eq!(session.execute(train, json!([])), json!(false), "{setting}");
    }
}

/// An augmented run with a seed above 2^53 gives the metrics of the CLI's run with it.
fn assert_a_seed_above_2_53_gives_the_cli_run(session: &Session, base: &str) {
    // A seed above 2^53 reaches the trainer exactly: the CLI's run with that seed,
    // augmented (the page's wasm CPU path makes the images the native one does).
    let seed = "9007199254740993";
    let query = format!(
        "?epochs=1&seed={seed}&augment=1&train-limit=500&test-limit=200&cpu-fallback=1&autostart=1"
    );
    session.goto(&format!("{base}{query}"));
    let lines = wait_for_run(session);
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let (out, metrics_arg) = (dir.path().join("run"), metrics.to_str().unwrap());
    succeed(&[
        "train",
        "--cpu-fallback",
        "--epochs",
        "1",
        "--seed",
        seed,
        "--augment",
        "--train-limit",
        "500",
        "--test-limit",
        "200",
        "--out-dir",
        out.to_str().unwrap(),
        "--metrics",
        metrics_arg,
    ]);
    let cli: EpochRecord =
        serde_json::from_str(std::fs::read_to_string(&metrics).unwrap().trim()).unwrap();
    assert_agrees(&page_record(&lines), &cli);
}

/// A test limit above the samples there are trains on all of them, with the CLI's note in
/// the log and the device line.
fn assert_a_limit_above_the_data_gets_the_cli_note(session: &Session, base: &str) {
    // A limit above the samples there are: all of them, with the CLI's note.
    let query = "?epochs=1&train-limit=100&test-limit=1000000&cpu-fallback=1&autostart=1";
    session.goto(&format!("{base}{query}"));
    let done = "return (window.mnistGpuLog || []).some((l) => /^(error|done) /.test(l));";
    wait_until_for(session, "the run", done, 120);
    let note =
        "note: the test limit 1000000 is more than the 10000 samples available; using all 10000";
    let lines = log_lines(session);
    assert!(lines.iter().any(|l| l == note), "{lines:#?}");
    let device = session.execute(
        "return document.getElementById('device').textContent;",
        json!([]),
    );
    assert!(device.as_str().unwrap().contains(note), "{device}");
}

/// A diverging run, with `cpu-fallback` on and off, ends as a divergence error naming the
/// learning rate field.
fn assert_divergence_ends_as_an_error(session: &Session, base: &str) {
    // The command line's divergence check, on both paths, at the learning rate where
    // the native CLI meets a NaN and the page's single-threaded sums stayed finite.
    for cpu in ["1", "0"] {
        let query = format!(
            "?epochs=2&lr=1e30&train-limit=1000&test-limit=200&cpu-fallback={cpu}&autostart=1"
        );
        session.goto(&format!("{base}{query}"));
        let failed = "return (window.mnistGpuLog || []).some((l) => /^(error|done) /.test(l));";
        wait_until_for(session, "the diverging run to end", failed, 300);
        let lines = log_lines(session);
        let error = lines.iter().find_map(|l| l.strip_prefix("error "));
        let error = error.unwrap_or_else(|| panic!("cpu={cpu}: not refused: {lines:#?}"));
        assert!(
            error.contains("training diverged in epoch 1")
                && error.contains("the learning rate field"),
            "cpu={cpu}: {error}"
        );
    }
}

/// On the CPU path the page yields to the browser while it trains (its timers keep
/// ticking and Stop works at once, however small the epochs), and while a resumed run
/// trains, Train cannot start a second one beside it.
#[test]
fn the_cpu_path_keeps_the_page_responsive_and_one_run_at_a_time() {
    in_browser("responsive", &WEBGPU_ARGS, |session, base| {
        let query = "?epochs=1000000000&train-limit=500&test-limit=200&cpu-fallback=1&autostart=1";
        session.goto(&format!("{base}{query}"));
        let epoch_done = "return (window.mnistGpuLog || []).some((l) => l.startsWith('{'));";
        wait_until_for(session, "an epoch to finish", epoch_done, 120);
        let heartbeat = "window.beat = { last: performance.now(), worst: 0 };
            setInterval(() => { const now = performance.now();
                beat.worst = Math.max(beat.worst, now - beat.last); beat.last = now; }, 10);";
        session.execute(heartbeat, json!([]));
        std::thread::sleep(Duration::from_secs(5));
        let worst = session.execute("return beat.worst;", json!([]));
        let worst = worst.as_f64().unwrap();
        assert!(
            worst < 500.0,
            "the page went {worst} ms without running a timer"
        );
        let stopped = |n: usize| {
            format!("return (window.mnistGpuLog || []).filter((l) => l.startsWith('stopped')).length >= {n};")
        };
        session.execute("document.getElementById('stop').click();", json!([]));
        wait_until_for(session, "the stop", &stopped(1), 5);
        // Resume: the same run goes on, and Train stays disabled until it ends.
        session.execute("document.getElementById('resume').click();", json!([]));
        let train = "return document.getElementById('train').disabled;";
        assert_eq!(
            session.execute(train, json!([])),
            json!(true),
            "Train during a resumed run"
        );
        session.execute("document.getElementById('train').click();", json!([]));
        std::thread::sleep(Duration::from_secs(2));
        session.execute("document.getElementById('stop').click();", json!([]));
        wait_until_for(session, "the second stop", &stopped(2), 5);
        let lines = log_lines(session);
        assert!(
            !lines.iter().any(|l| l.starts_with("error ")),
            "a second run started: {lines:#?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("device ")).count(),
            1,
            "{lines:#?}"
        );
    });
}

/// Without WebGPU (the `no-webgpu=1` switch hides it) the page says so before Train; a
/// model made by the CLI loads before any training, and one whose outputs overflow is
/// refused as `mnist-gpu eval` refuses it; drawing with no model says one is needed.
#[test]
fn models_load_before_training_and_overflowing_ones_are_refused() {
    in_browser("models", &WEBGPU_ARGS, |session, base| {
        let page = format!("{base}?no-webgpu=1&test-limit=200");
        session.goto(&page);
        let ready = "return (window.mnistGpuLog || []).some((l) => l.startsWith('webgpu '));";
        wait_until(session, "the WebGPU check", ready);
        assert!(log_lines(session).contains(&"webgpu false".to_string()));
        let device = session.execute(
            "return document.getElementById('device').textContent;",
            json!([]),
        );
        assert!(device.as_str().unwrap().contains("unavailable"), "{device}");
        let stroke = "const c = document.getElementById('draw'), r = c.getBoundingClientRect();
            for (const t of ['pointerdown', 'pointermove', 'pointerup']) c.dispatchEvent(new PointerEvent(t,
                { clientX: r.left + 100, clientY: r.top + 100, bubbles: true, pointerType: 'mouse' }));
            return document.getElementById('top3').textContent;";
        let said = session.execute(stroke, json!([]));
        assert!(said.as_str().unwrap().contains("No model yet"), "{said}");

        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        succeed(&[
            "train",
            "--cpu-fallback",
            "--epochs",
            "1",
            "--train-limit",
            "500",
            "--test-limit",
            "200",
            "--out-dir",
            out.to_str().unwrap(),
        ]);
        let model = out.join("model.safetensors");
        session.upload("#load", &model);
        let loaded = "return (window.mnistGpuLog || []).some((l) => l.startsWith('loaded '));";
        wait_until(session, "the model to load", loaded);

        // The same model with every weight at ±3e38: finite, but its outputs overflow.
        let mut params = mnist_gpu::modelfile::load_model(&model).unwrap();
        for (i, w) in params.trainable.iter_mut().enumerate() {
            *w = if i % 2 == 0 { 3e38 } else { -3e38 };
        }
        let huge = dir.path().join("huge.safetensors");
        mnist_gpu::modelfile::save_model(&params, 1, &huge).unwrap();
        session.goto(&page);
        wait_until(session, "the WebGPU check", ready);
        session.upload("#load", &huge);
        let refusal = wait_for_line(session, "refused ", "the refusal");
        let lines = log_lines(session);
        assert!(refusal.contains("non-finite outputs"), "{refusal}");
        assert!(
            !lines.iter().any(|l| l.starts_with("loaded ")),
            "{lines:#?}"
        );
    });
}
