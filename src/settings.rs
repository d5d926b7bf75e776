//! The rules for a run's settings, written once: the command line's flags (clap's value
//! parsers in `main.rs`) and the page's form and URL ([`PageForm::validate`]) go through
//! the same functions, so both refuse the same values with the same words. Compiled
//! natively too, so the page's rules are tested without a browser.

use crate::model::{parse_hidden, ModelConfig};
use serde::Deserialize;

/// How an epoch is cut into steps and how many epochs run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 32,
            seed: 42,
            shuffle: true,
        }
    }
}

/// Steps in an epoch of `samples` samples at `batch_size` (the last one may be short).
pub fn steps_per_epoch(samples: usize, batch_size: usize) -> usize {
    samples.div_ceil(batch_size.max(1))
}

/// A whole number of at least 1 (`--epochs`, `--batch-size`, the limits).
pub fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a positive whole number")),
    }
}

/// A learning rate: a finite number above 0 that a 32-bit float holds at full precision
/// (from about 1.2e-38; smaller ones round to 0 or lose their digits).
pub fn learning_rate(text: &str) -> Result<f32, String> {
    let text = text.trim();
    match text.parse::<f32>() {
        Ok(lr) if lr.is_finite() && lr >= f32::MIN_POSITIVE => Ok(lr),
        _ if text.parse::<f64>().is_ok_and(|x| x > 0.0 && x < 1.0) => Err(format!(
            "'{text}' is too small: the smallest learning rate is {:e} (32-bit floats)",
            f32::MIN_POSITIVE
        )),
        Ok(_) => Err(format!("must be a finite number above 0, got '{text}'")),
        Err(_) => Err(format!("'{text}' is not a number")),
    }
}

/// A seed: a whole number from 0 to 2^64 - 1, kept exactly (the page passes it as text,
/// since JavaScript numbers lose digits above 2^53).
pub fn seed(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("'{text}' is not a whole number from 0 to {}", u64::MAX))
}

/// Hidden layer widths, comma-separated, of a model small enough to train here.
pub fn hidden(text: &str) -> Result<Vec<usize>, String> {
    let hidden = parse_hidden(text)?;
    ModelConfig::mlp(&hidden, false).check()?;
    Ok(hidden)
}

/// A note when a limit asked for more samples than the `kept` there are (`name`: the
/// flag or the page's field).
pub fn limit_note(limit: Option<usize>, kept: usize, name: &str) -> Option<String> {
    limit.filter(|&n| n > kept).map(|n| {
        format!("note: {name} {n} is more than the {kept} samples available; using all {kept}")
    })
}

/// The page's form (and URL) as typed: every value as text, checked by
/// [`PageForm::validate`] with the command line's rules.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct PageForm {
    pub epochs: String,
    pub batch_size: String,
    pub lr: String,
    pub hidden: String,
    pub seed: String,
    /// Empty: all samples.
    pub train_limit: String,
    pub test_limit: String,
    pub raw_pixels: bool,
    /// Train on the CPU path (also what the page does when WebGPU is missing).
    pub cpu: bool,
}

/// The page's settings once every field passed its rule.
#[derive(Clone, Debug, PartialEq)]
pub struct PageSettings {
    pub model: ModelConfig,
    pub lr: f32,
    pub options: TrainOptions,
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    pub cpu: bool,
}

/// `rule` applied to the `label` field's `value`; a refusal names the field, the value
/// and the rule.
fn field<T>(label: &str, value: &str, rule: fn(&str) -> Result<T, String>) -> Result<T, String> {
    rule(value).map_err(|why| format!("the {label} field ('{value}'): {why}"))
}

fn optional_limit(text: &str) -> Result<Option<usize>, String> {
    match text.trim() {
        "" => Ok(None),
        _ => positive(text).map(Some),
    }
}

impl PageForm {
    /// Every field through the rule of the flag it stands for; the first refusal.
    pub fn validate(&self) -> Result<PageSettings, String> {
        let epochs = field("epochs", &self.epochs, positive)?;
        let batch_size = field("batch size", &self.batch_size, positive)?;
        let lr = field("learning rate", &self.lr, learning_rate)?;
        let hidden = field("hidden", &self.hidden, hidden)?;
        let seed = field("seed", &self.seed, seed)?;
        let train_limit = field("train limit", &self.train_limit, optional_limit)?;
        let test_limit = field("test limit", &self.test_limit, optional_limit)?;
        Ok(PageSettings {
            model: ModelConfig::mlp(&hidden, self.raw_pixels),
            lr,
            options: TrainOptions {
                epochs,
                batch_size,
                seed,
                shuffle: true,
            },
            train_limit,
            test_limit,
            cpu: self.cpu,
        })
    }
}

/// A message written for the command line, with its flags replaced by the page's
/// controls that stand for them.
pub fn in_page_words(message: &str) -> String {
    const CONTROLS: [(&str, &str); 8] = [
        ("choose another with --adapter, or ", ""),
        (
            "use a smaller --batch-size",
            "use a smaller batch size (the batch size field)",
        ),
        ("use --cpu-fallback", "tick the CPU (wasm) box"),
        ("--batch-size", "the batch size field"),
        ("--lr", "the learning rate field"),
        ("--epochs", "the epochs field"),
        ("--hidden", "the hidden field"),
        ("--cpu-fallback", "the CPU (wasm) box"),
    ];
    CONTROLS
        .iter()
        .fold(message.to_string(), |text, (flag, control)| {
            text.replace(flag, control)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> PageForm {
        PageForm {
            epochs: "10".into(),
            batch_size: "32".into(),
            lr: "0.001".into(),
            hidden: "128".into(),
            seed: "42".into(),
            ..PageForm::default()
        }
    }

    /// `form()` with the field labelled `label` set to `value`: its refusal.
    fn refusal(label: &str, value: &str) -> String {
        let mut f = form();
        let field = match label {
            "epochs" => &mut f.epochs,
            "batch size" => &mut f.batch_size,
            "learning rate" => &mut f.lr,
            "hidden" => &mut f.hidden,
            "seed" => &mut f.seed,
            "train limit" => &mut f.train_limit,
            "test limit" => &mut f.test_limit,
            _ => unreachable!("{label}"),
        };
        *field = value.to_string();
        f.validate().expect_err("refused")
    }

    #[test]
    fn the_default_form_is_the_clis_default_run() {
        let s = form().validate().unwrap();
        assert_eq!(s.options, TrainOptions::default());
        assert_eq!(s.model, ModelConfig::default());
        assert_eq!((s.lr, s.train_limit, s.test_limit), (1e-3, None, None));
    }

    #[test]
    fn every_bad_value_is_refused_naming_field_rule_and_value() {
        let cases = [
            ("epochs", "0", "at least 1"),
            ("epochs", "", "positive whole"),
            ("epochs", "NaN", "positive whole"),
            ("epochs", "-1", "positive whole"),
            ("epochs", "1.5", "positive whole"),
            ("batch size", "0", "at least 1"),
            ("batch size", "-3", "positive whole"),
            ("learning rate", "0", "above 0"),
            ("learning rate", "-1", "above 0"),
            ("learning rate", "NaN", "above 0"),
            ("learning rate", "Infinity", "above 0"),
            ("learning rate", "fast", "not a number"),
            ("learning rate", "1e-40", "too small"),
            ("hidden", "0", "at least 1"),
            ("hidden", "", "empty"),
            ("hidden", "64,abc", "not a layer width"),
            ("hidden", "100000", "at most 65536"),
            ("hidden", "65536,65536", "at most"),
            ("seed", "-1", "whole number from 0"),
            ("seed", "18446744073709551616", "from 0"),
            ("train limit", "0", "at least 1"),
            ("train limit", "-5", "positive whole"),
            ("test limit", "0", "at least 1"),
        ];
        for (label, value, rule) in cases {
            let message = refusal(label, value);
            let start = format!("the {label} field ('{value}'): ");
            assert!(message.starts_with(&start), "{message}");
            assert!(message.contains(rule), "{label}: {message}");
        }
    }

    #[test]
    fn seeds_and_limits_are_kept_exactly() {
        let mut f = form();
        f.seed = "9007199254740993".into();
        f.train_limit = "500".into();
        f.test_limit = " ".into();
        let s = f.validate().unwrap();
        assert_eq!(s.options.seed, 9_007_199_254_740_993);
        assert_eq!((s.train_limit, s.test_limit), (Some(500), None));
        f.seed = "18446744073709551615".into();
        assert_eq!(f.validate().unwrap().options.seed, u64::MAX);
    }

    #[test]
    fn the_page_words_name_its_controls() {
        assert_eq!(
            in_page_words(
                "(use a smaller --batch-size); (choose another with --adapter, or use \
                 --cpu-fallback); try a smaller learning rate (--lr)"
            ),
            "(use a smaller batch size (the batch size field)); (tick the CPU (wasm) box); \
             try a smaller learning rate (the learning rate field)"
        );
    }
}
