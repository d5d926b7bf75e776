//! The progress line: the formatter, the rate/ETA logic, the console's drawing and
//! clearing (through a captured writer), and the binary's real terminal output through a
//! pseudo-terminal (`portable-pty`).

mod common;

use mnist_gpu::backend::EpochRecord;
use mnist_gpu::backend::StepProgress;
use mnist_gpu::progress::{
    bar, eta, format_closing, format_duration, format_live, format_per_step, Console, BAR_CELLS,
};
use mnist_gpu::train::Observer;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn progress(steps_done: usize, steps_total: usize, loss_sum: f64, correct: u64) -> StepProgress {
    StepProgress {
        steps_done,
        steps_total,
        samples_done: steps_done * 32,
        loss_sum,
        correct,
    }
}

#[test]
fn durations_read_like_a_person_writes_them() {
    let s = Duration::from_secs_f64;
    assert_eq!(format_duration(s(0.0)), "0.0s");
    assert_eq!(format_duration(s(0.44)), "0.4s");
    assert_eq!(format_duration(s(9.94)), "9.9s");
    assert_eq!(format_duration(s(12.4)), "12s");
    assert_eq!(format_duration(s(185.0)), "3m05s");
    assert_eq!(format_duration(s(3725.0)), "1h02m");
    assert_eq!(format_per_step(0.5, 1875), "267us/step");
    assert_eq!(format_per_step(26.9, 469), "57ms/step");
    assert_eq!(format_per_step(3.0, 2), "1.5s/step");
}

#[test]
fn the_bar_fills_in_half_cells() {
    let cells = |s: &str| s.chars().count();
    assert_eq!(bar(0, 1875), "─".repeat(BAR_CELLS));
    assert_eq!(bar(1875, 1875), "━".repeat(BAR_CELLS));
    assert_eq!(bar(10, 20), format!("{}{}", "━".repeat(10), "─".repeat(10)));
    assert_eq!(bar(11, 40), format!("{}╸{}", "━".repeat(5), "─".repeat(14)));
    for done in 0..=37 {
        assert_eq!(cells(&bar(done, 37)), BAR_CELLS);
    }
    assert_eq!(
        cells(&bar(5, 0)),
        BAR_CELLS,
        "an empty epoch does not divide by zero"
    );
}

#[test]
fn the_eta_is_unknown_until_a_step_is_timed_then_follows_the_measured_rate() {
    let second = Duration::from_secs(1);
    assert_eq!(eta(0, &progress(0, 100, 0.0, 0), second), None);
    assert_eq!(eta(0, &progress(10, 100, 1.0, 1), Duration::ZERO), None);
    // 25 steps in 1 s: 75 left take 3 s.
    assert_eq!(eta(0, &progress(25, 100, 1.0, 1), second), Some(3 * second));
    // Resumed after step 40: only the 20 steps trained since count for the rate.
    assert_eq!(
        eta(40, &progress(60, 100, 1.0, 1), 2 * second),
        Some(4 * second)
    );
    assert_eq!(eta(40, &progress(40, 100, 1.0, 1), 2 * second), None);
    assert_eq!(
        eta(0, &progress(100, 100, 1.0, 1), second),
        Some(Duration::ZERO)
    );
}

#[test]
fn the_live_line_shows_the_counter_with_its_own_running_metrics() {
    let start = format_live(&progress(0, 1875, 0.0, 0), Duration::ZERO, None);
    assert_eq!(start, format!("   0/1875 {} 0.0s ETA ?", "─".repeat(20)));
    let p = progress(264, 1875, 264.0 * 32.0 * 0.5, 264 * 32 * 3 / 4);
    let line = format_live(
        &p,
        Duration::from_millis(70),
        Some(Duration::from_millis(430)),
    );
    assert_eq!(
        line,
        format!(
            " 264/1875 ━━╸{} 0.1s ETA 0.4s - loss: 0.5000 - accuracy: 0.7500",
            "─".repeat(17)
        )
    );
}

#[test]
fn the_closing_line_has_time_per_step_and_validation_metrics() {
    let record = EpochRecord {
        epoch: 1,
        loss: 0.2267,
        accuracy: 0.9315,
        val_loss: 0.1318,
        val_accuracy: 0.9618,
        seconds: 0.5,
        samples_per_second: 120_000.0,
    };
    assert_eq!(
        format_closing(&record, 1875, 1875),
        "1875/1875 - 0.50s 267us/step (120000 samples/s) - loss: 0.2267 - accuracy: 0.9315 - val_loss: 0.1318 - val_accuracy: 0.9618"
    );
    // A resumed epoch: the time covers the 875 steps trained after the resume.
    assert!(format_closing(&record, 1875, 875).contains("0.50s 571us/step"));
}

/// A writer whose bytes the test can read afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[test]
fn the_console_draws_each_report_whole_and_clears_the_line_on_failure() {
    let captured = Captured::default();
    let mut console = Console::new(Some(Box::new(captured.clone())), Some(60));
    console.epoch_started(1, 3, &progress(0, 100, 0.0, 0));
    // Drawn at once (the epoch started), then throttled, but the last step always.
    console.step(&progress(50, 100, 50.0 * 32.0 * 0.25, 800));
    console.step(&progress(100, 100, 100.0 * 32.0 * 0.125, 3200));
    let frames: Vec<String> = captured
        .text()
        .split('\r')
        .filter(|f| !f.is_empty())
        .map(|f| f.trim_end_matches("\x1b[K").to_string())
        .collect();
    assert!(
        frames[0].starts_with("  0/100 ") && frames[0].ends_with("ETA ?"),
        "{frames:?}"
    );
    let last = frames.last().unwrap();
    assert!(last.starts_with("100/100 ━━━━"), "{last}");
    // Cut to the 60 columns given, so the line never wraps.
    assert!(frames.iter().all(|f| f.chars().count() <= 59), "{frames:?}");
    // The counter shown is the one the loss belongs to: 0.125 at step 100, not 0.25.
    assert!(!frames
        .iter()
        .any(|f| f.starts_with("100/100") && f.contains("0.2500")));
    console.ended_early();
    assert!(captured.text().ends_with("\r\x1b[K"), "cleared on error");
    let before = captured.text().len();
    drop(console);
    assert_eq!(captured.text().len(), before, "nothing left to clear");
}

#[test]
fn without_a_terminal_there_is_no_live_line() {
    let mut console = Console::new(None, None);
    console.epoch_started(1, 1, &progress(0, 10, 0.0, 0));
    console.step(&progress(10, 10, 1.0, 1));
    console.ended_early();
}

/// Run the binary in a pseudo-terminal of 120 columns; everything it wrote, raw.
/// Two CPU epochs of 3,750 small steps: long enough for several live frames.
fn terminal_run(dir: &std::path::Path) -> Vec<String> {
    let out = dir.to_str().unwrap();
    [
        "train",
        "--cpu-fallback",
        "--epochs",
        "2",
        "--train-limit",
        "30000",
        "--batch-size",
        "8",
        "--test-limit",
        "500",
        "--out-dir",
        out,
    ]
    .map(String::from)
    .to_vec()
}

fn in_terminal(args: &[String], env: &[(&str, &str)]) -> (String, u32) {
    let (mut child, master) = common::terminal::spawn_in_terminal(args, env);
    let mut reader = master.try_clone_reader().unwrap();
    let reading = std::thread::spawn(move || {
        let mut raw = Vec::new();
        // Ends with EOF or EIO once the child has exited and the slave side is closed.
        let _ = reader.read_to_end(&mut raw);
        raw
    });
    let status = child.wait().unwrap();
    drop(master);
    let raw = reading.join().unwrap();
    (
        String::from_utf8_lossy(&raw).into_owned(),
        status.exit_code(),
    )
}

/// What the screen shows at the end: `\r` returns to the line's start, `ESC[K` erases to
/// its end, `\n` starts a new line.
fn screen(raw: &str) -> Vec<String> {
    let mut lines = vec![Vec::<char>::new()];
    let mut col = 0;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        let line = lines.last_mut().unwrap();
        match c {
            '\r' => col = 0,
            '\n' => {
                lines.push(Vec::new());
                col = 0;
            }
            '\x1b' => {
                let mut seq = String::new();
                while let Some(c) = chars.next_if(|c| !c.is_alphabetic()) {
                    seq.push(c);
                }
                seq.extend(chars.next());
                if seq == "[K" {
                    line.truncate(col);
                }
            }
            c => {
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    lines.into_iter().map(|l| l.into_iter().collect()).collect()
}

/// The live frames drawn between `Epoch k/N` and the closing line, in order.
fn frames(raw: &str) -> Vec<String> {
    raw.split(['\r', '\n'])
        .map(|f| f.trim_end_matches("\x1b[K").trim_start_matches("\x1b[K"))
        .filter(|f| f.contains('━') || f.contains('─'))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_terminal_sees_keras_style_epochs_with_a_truthful_live_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (raw, code) = in_terminal(&terminal_run(&dir), &[]);
    assert_eq!(code, 0, "{raw}");
    let shown = screen(&raw);
    let text = shown.join("\n");
    for epoch in 1..=2 {
        let header = shown.iter().position(|l| l == &format!("Epoch {epoch}/2"));
        let header = header.unwrap_or_else(|| panic!("no Epoch {epoch}/2 line:\n{text}"));
        let closing = &shown[header + 1];
        assert!(
            closing.starts_with("3750/3750 - ") && closing.contains("us/step"),
            "the closing line follows the header, the live line erased:\n{text}"
        );
        assert!(closing.contains(" - val_accuracy: "), "{closing}");
    }
    assert!(!text.contains('━'), "no bar left on screen:\n{text}");
    let drawn = frames(&raw);
    assert!(
        drawn.len() >= 4,
        "the line was redrawn during the epoch: {drawn:?}"
    );
    // Frames drawn since the epoch's first (0 steps) frame.
    let mut reports_seen = 0;
    for frame in &drawn {
        let (counter, rest) = frame.trim_start().split_once(' ').unwrap();
        let done: usize = counter.split('/').next().unwrap().parse().unwrap();
        if done == 0 {
            assert!(rest.ends_with("ETA ?"), "nothing measured yet: {frame}");
            reports_seen = 0;
            continue;
        }
        reports_seen += 1;
        assert!(rest.contains(" - loss: "), "{frame}");
        // The rate needs two reports; from the second frame on the ETA is known.
        assert!(reports_seen == 1 || !rest.contains("ETA ?"), "{frame}");
        // An honest ETA for a sub-second epoch: never minutes.
        assert!(!rest.contains('m'), "{frame}");
    }
}

#[test]
fn an_interrupt_clears_the_live_line_before_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let (raw, code) = in_terminal(&terminal_run(&dir), &[("MNIST_GPU_INTERRUPT_AT", "1:2000")]);
    assert_eq!(code, 130, "{raw}");
    let shown = screen(&raw);
    let text = shown.join("\n");
    let message = shown
        .iter()
        .position(|l| l.starts_with("interrupted in epoch 1"))
        .unwrap_or_else(|| panic!("no interrupt message:\n{text}"));
    assert_eq!(
        shown[message - 1],
        "Epoch 1/2",
        "nothing stale above it:\n{text}"
    );
    assert!(!text.contains('━') && !text.contains('─'), "{text}");
}
