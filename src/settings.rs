//! A run's settings and the rules for them, written once. [`Settings`] is what defines a
//! training run; the command line's flags (clap's value parsers in `main.rs`), the page's
//! form and URL ([`PageForm::validate`]) and a checkpoint's metadata ([`Settings::read`])
//! all go through the same rule for each field, so all three refuse the same values with
//! the same words, and [`Settings::check`] checks a whole one with those rules. Compiled
//! natively too, so the page's rules are tested without a browser.

use crate::model::{parse_hidden, Hyper, ModelConfig, ModelKind};
use serde::Deserialize;

/// How an epoch is cut into steps and how many epochs run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Train on each epoch's augmented images ([`crate::layers::augment`]).
    pub augment: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 32,
            seed: 42,
            shuffle: true,
            augment: false,
        }
    }
}

/// Steps in an epoch of `samples` samples at `batch_size` (the last one may be short).
pub fn steps_per_epoch(samples: usize, batch_size: usize) -> usize {
    samples.div_ceil(batch_size.max(1))
}

/// What defines a training run: the model, Adam's learning rate, the epochs and their
/// steps, and how much of the data set it uses. The command line's flags, the page's form
/// and a checkpoint's metadata each become one; [`Settings::check`] says whether it is
/// one this program trains.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub model: ModelConfig,
    pub lr: f32,
    pub options: TrainOptions,
    /// The first N training (test) samples; `None`: all of them.
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

impl Default for Settings {
    /// The command line's default run.
    fn default() -> Self {
        Settings {
            model: ModelConfig::default(),
            lr: Hyper::default().lr,
            options: TrainOptions::default(),
            train_limit: None,
            test_limit: None,
        }
    }
}

/// The names of the settings besides the model, which are also their checkpoint
/// metadata keys; [`Settings::fields`] lists them in this order.
pub const LR: &str = "lr";
pub const EPOCHS: &str = "epochs";
pub const BATCH_SIZE: &str = "batch_size";
pub const SEED: &str = "seed";
pub const SHUFFLE: &str = "shuffle";
pub const AUGMENT: &str = "augment";
pub const TRAIN_LIMIT: &str = "train_limit";
pub const TEST_LIMIT: &str = "test_limit";

/// A limit as text: a number, or `all`.
const ALL: &str = "all";

/// A setting that [`Settings::read`] could not take.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FieldError {
    #[error("'{0}' is missing")]
    Missing(&'static str),
    /// Its rule refused it (`why`, in the rule's words).
    #[error("'{key}' is {text}; {why}")]
    Refused {
        key: &'static str,
        text: String,
        why: String,
    },
    /// Not a value of its type at all.
    #[error("'{key}' has the invalid value '{text}'")]
    Invalid { key: &'static str, text: String },
}

impl Settings {
    /// Adam's and BatchNorm's constants, with this run's learning rate.
    pub fn hyper(&self) -> Hyper {
        let seed = self.options.seed;
        Hyper {
            lr: self.lr,
            // The dropout hash takes 32 bits: both halves of the seed count.
            dropout_seed: (seed ^ (seed >> 32)) as u32,
            ..Hyper::default()
        }
    }

    /// Every setting but the model, as text under its name: what a checkpoint stores
    /// (the model is stored as the file's architecture), and what [`Settings::read`]
    /// reads back.
    pub fn fields(&self) -> [(&'static str, String); 8] {
        let limit = |limit: Option<usize>| limit.map_or(ALL.to_string(), |n| n.to_string());
        [
            (LR, self.lr.to_string()),
            (EPOCHS, self.options.epochs.to_string()),
            (BATCH_SIZE, self.options.batch_size.to_string()),
            (SEED, self.options.seed.to_string()),
            (SHUFFLE, self.options.shuffle.to_string()),
            (AUGMENT, self.options.augment.to_string()),
            (TRAIN_LIMIT, limit(self.train_limit)),
            (TEST_LIMIT, limit(self.test_limit)),
        ]
    }

    /// The settings of `model` whose other fields `text` gives by name, as
    /// [`Settings::fields`] writes them, each through the rule of the flag it stands for;
    /// the first field missing or refused, in the order of [`Settings::fields`].
    pub fn read<'a>(
        model: ModelConfig,
        text: impl Fn(&'static str) -> Option<&'a str>,
    ) -> Result<Settings, FieldError> {
        let text = |key| text(key).ok_or(FieldError::Missing(key));
        let limit = |key| match text(key)? {
            ALL => Ok(None),
            value => by_rule(key, value, positive).map(Some),
        };
        let lr = by_rule(LR, text(LR)?, learning_rate)?;
        let epochs = by_rule(EPOCHS, text(EPOCHS)?, positive)?;
        let batch_size = by_rule(BATCH_SIZE, text(BATCH_SIZE)?, positive)?;
        let seed = by_rule(SEED, text(SEED)?, seed)?;
        let shuffle = flag(SHUFFLE, text(SHUFFLE)?)?;
        // Checkpoints written before --augment existed trained without it.
        let augment = text(AUGMENT).map_or(Ok(false), |value| flag(AUGMENT, value))?;
        Ok(Settings {
            model,
            lr,
            options: TrainOptions {
                epochs,
                batch_size,
                seed,
                shuffle,
                augment,
            },
            train_limit: limit(TRAIN_LIMIT)?,
            test_limit: limit(TEST_LIMIT)?,
        })
    }

    /// The one check of a whole run's settings: a model the trainers implement and small
    /// enough to train, and every other field passing its rule in the text a checkpoint
    /// stores (so a checked run's checkpoint reads back to the same settings).
    pub fn check(&self) -> Result<(), String> {
        self.model.check()?;
        self.read_back()
            .map(|_| ())
            .map_err(|error| format!("setting {error}"))
    }

    /// These settings as a checkpoint would read them back: every field written as text
    /// ([`Settings::fields`]) and read through its rule ([`Settings::read`]).
    pub fn read_back(&self) -> Result<Settings, FieldError> {
        let fields = self.fields();
        let text = |key| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        Settings::read(self.model.clone(), text)
    }
}

/// The on/off setting `key`, written `true` or `false`.
fn flag(key: &'static str, text: &str) -> Result<bool, FieldError> {
    text.parse().map_err(|_| FieldError::Invalid {
        key,
        text: text.to_string(),
    })
}

/// `rule` applied to the setting `key`'s `text`.
fn by_rule<T>(
    key: &'static str,
    text: &str,
    rule: fn(&str) -> Result<T, String>,
) -> Result<T, FieldError> {
    rule(text).map_err(|why| FieldError::Refused {
        key,
        text: text.to_string(),
        why,
    })
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
    /// `mlp` or `convnet` (empty: `mlp`).
    pub model: String,
    pub epochs: String,
    pub batch_size: String,
    pub lr: String,
    /// The MLP's hidden widths; empty for the convnet.
    pub hidden: String,
    pub seed: String,
    /// Empty: all samples.
    pub train_limit: String,
    pub test_limit: String,
    pub raw_pixels: bool,
    /// Train on augmented images (`--augment`).
    pub augment: bool,
    /// Train on the CPU path (also what the page does when WebGPU is missing).
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
    /// The run's settings: every field through the rule of the flag it stands for; the
    /// first refusal. (The `cpu` box says where it trains, not what.)
    pub fn validate(&self) -> Result<Settings, String> {
        let model = self.model()?;
        let epochs = field("epochs", &self.epochs, positive)?;
        let batch_size = field("batch size", &self.batch_size, positive)?;
        let lr = field("learning rate", &self.lr, learning_rate)?;
        let seed = field("seed", &self.seed, seed)?;
        let train_limit = field("train limit", &self.train_limit, optional_limit)?;
        let test_limit = field("test limit", &self.test_limit, optional_limit)?;
        // The page always shuffles.
        let options = TrainOptions {
            shuffle: true,
            epochs,
            batch_size,
            seed,
            augment: self.augment,
        };
        Ok(Settings {
            model,
            lr,
            options,
            train_limit,
            test_limit,
        })
    }
}

impl PageForm {
    /// The model the model and hidden fields name: the MLP with its hidden widths, or the
    /// convnet, whose hidden field must be empty (it has no widths to set).
    fn model(&self) -> Result<ModelConfig, String> {
        let kind = match self.model.trim() {
            "" => ModelKind::Mlp,
            text => field("model", text, |t| t.parse::<ModelKind>())?,
        };
        match kind {
            ModelKind::Mlp => {
                let hidden = field("hidden", &self.hidden, hidden)?;
                Ok(ModelConfig::mlp(&hidden, self.raw_pixels))
            }
            ModelKind::Convnet if self.hidden.trim().is_empty() => {
                Ok(ModelConfig::convnet(self.raw_pixels))
            }
            ModelKind::Convnet => Err(format!(
                "the hidden field ('{}') sets the MLP's widths; the convnet's layers are \
                 fixed (leave it empty, or choose the mlp model)",
                self.hidden
            )),
        }
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
        assert_eq!(form().validate().unwrap(), Settings::default());
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

    /// The model field: the convnet (its hidden field empty), refusals naming the field.
    #[test]
    fn the_model_field_names_the_mlp_or_the_convnet() {
        let convnet = PageForm {
            model: "convnet".into(),
            hidden: "".into(),
            ..form()
        };
        assert_eq!(
            convnet.validate().unwrap().model,
            ModelConfig::convnet(false)
        );
        assert_eq!(
            form().validate().unwrap().model,
            ModelConfig::mlp(&[128], false)
        );
        let with_hidden = PageForm {
            model: "convnet".into(),
            ..form()
        };
        let refused = with_hidden.validate().unwrap_err();
        assert!(refused.starts_with("the hidden field ('128')"), "{refused}");
        let unknown = PageForm {
            model: "resnet".into(),
            ..form()
        };
        let refused = unknown.validate().unwrap_err();
        assert!(
            refused.starts_with("the model field ('resnet'): unknown model"),
            "{refused}"
        );
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

    /// Settings unlike the default in every field.
    fn odd_settings() -> Settings {
        Settings {
            model: ModelConfig::mlp(&[32, 16], true),
            lr: 1e-9,
            options: TrainOptions {
                epochs: 3,
                batch_size: 7,
                seed: u64::MAX,
                shuffle: false,
                augment: true,
            },
            train_limit: Some(500),
            test_limit: None,
        }
    }

    #[test]
    fn settings_read_back_from_their_fields() {
        for settings in [Settings::default(), odd_settings()] {
            assert_eq!(settings.read_back(), Ok(settings.clone()));
            assert_eq!(settings.check(), Ok(()));
        }
        let texts: Vec<(&str, String)> = Settings::default().fields().into();
        let expected = [
            (LR, "0.001"),
            (EPOCHS, "10"),
            (BATCH_SIZE, "32"),
            (SEED, "42"),
            (SHUFFLE, "true"),
            (AUGMENT, "false"),
            (TRAIN_LIMIT, "all"),
            (TEST_LIMIT, "all"),
        ];
        assert_eq!(texts, expected.map(|(k, v)| (k, v.to_string())));
    }

    #[test]
    fn reading_names_the_field_missing_or_refused() {
        // The default's fields with `key` set to `value` (`None`: removed), read back.
        let with = |key: &str, value: Option<&str>| {
            let mut fields: Vec<(&str, String)> = Settings::default().fields().into();
            fields.retain(|(k, _)| *k != key);
            fields.extend(value.map(|v| (key, v.to_string())));
            let text = |k| {
                fields
                    .iter()
                    .find(|(f, _)| *f == k)
                    .map(|(_, v)| v.as_str())
            };
            Settings::read(ModelConfig::default(), text)
        };
        assert_eq!(with(SEED, None), Err(FieldError::Missing(SEED)));
        // Written before --augment existed: trained without it.
        let augment = |value| with(AUGMENT, value).map(|s| s.options.augment);
        assert_eq!(augment(None), Ok(false));
        assert_eq!(augment(Some("true")), Ok(true));
        let refused = |key, value| with(key, Some(value)).unwrap_err().to_string();
        assert_eq!(
            refused(BATCH_SIZE, "0"),
            "'batch_size' is 0; must be at least 1"
        );
        assert_eq!(
            refused(TRAIN_LIMIT, "none"),
            "'train_limit' is none; 'none' is not a positive whole number"
        );
        assert_eq!(
            refused(SHUFFLE, "maybe"),
            "'shuffle' has the invalid value 'maybe'"
        );
        assert_eq!(
            refused(AUGMENT, "yes"),
            "'augment' has the invalid value 'yes'"
        );
        assert!(refused(LR, "1e-45").contains("too small"));
    }

    #[test]
    fn check_refuses_each_bad_field_in_its_rules_words() {
        let bad = |edit: fn(&mut Settings)| {
            let mut settings = Settings::default();
            edit(&mut settings);
            settings.check().expect_err("refused")
        };
        assert_eq!(
            bad(|s| s.options.batch_size = 0),
            "setting 'batch_size' is 0; must be at least 1"
        );
        assert_eq!(
            bad(|s| s.test_limit = Some(0)),
            "setting 'test_limit' is 0; must be at least 1"
        );
        assert!(bad(|s| s.lr = 1e-45).contains("too small"));
        assert!(bad(|s| s.lr = f32::NAN).contains("finite number above 0"));
        assert!(bad(|s| s.lr = -1.0).contains("finite number above 0"));
        let huge = bad(|s| s.model = ModelConfig::mlp(&[65536, 65536], false));
        assert!(huge.contains("at most 100000000"), "{huge}");
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
