//! Every bad input of the binary, table-driven: a broken data directory, bad flags, bad
//! model files for each command that reads one, bad pictures for `predict`, outputs that
//! cannot be written, and GPU limits. Each must end with a clear error that names the
//! file or flag and the problem, a non-zero exit code, and never a panic (the tests run
//! the binary with RUST_BACKTRACE=1, so a panic would also print a backtrace).

mod common;

use common::cli::*;
use mnist_gpu::data::{self, write_idx};
use mnist_gpu::model::{ModelConfig, Params};
use mnist_gpu::modelfile;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

#[test]
fn bad_data_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let out = s(&root.join("out"));
    let train = |dir: &Path| -> Vec<String> {
        [
            "train",
            "--cpu-fallback",
            "--epochs",
            "1",
            "--out-dir",
            &out,
            "--data-dir",
            &s(dir),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut cases = Vec::new();
    let mut add = |what: &str, dir: &Path, words: &[&str]| {
        let mut c = case(what, &[], words);
        c.args = train(dir);
        cases.push(c);
    };

    add(
        "missing directory",
        &root.join("nowhere"),
        &["nowhere", "does not exist"],
    );
    let file = root.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    add(
        "a file, not a directory",
        &file,
        &["plain-file", "is not a directory"],
    );

    let dir = broken_set(root, "missing", data::TEST_LABELS, |p| {
        std::fs::remove_file(p).unwrap()
    });
    add(
        "missing file",
        &dir,
        &[
            &s(&dir),
            "no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz",
            data::TRAIN_IMAGES,
            data::TRAIN_LABELS,
            data::TEST_IMAGES,
        ],
    );
    let dir = broken_set(root, "empty", data::TRAIN_LABELS, |p| {
        std::fs::write(p, b"").unwrap()
    });
    add("empty file", &dir, &[data::TRAIN_LABELS, "file is empty"]);
    let dir = broken_set(root, "dir-as-file", data::TEST_IMAGES, |p| {
        std::fs::remove_file(p).unwrap();
        std::fs::create_dir(p).unwrap();
    });
    add(
        "a directory where a file should be",
        &dir,
        &[data::TEST_IMAGES, "is a directory"],
    );
    // Unreadable: as root, permission bits do not stop reads, but /proc/self/mem is a
    // regular file whose read at offset 0 always fails (EIO), for root too.
    let dir = broken_set(root, "unreadable", data::TRAIN_IMAGES, |p| {
        std::fs::remove_file(p).unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", p).unwrap();
    });
    add(
        "unreadable file",
        &dir,
        &[data::TRAIN_IMAGES, "cannot read", "os error"],
    );
    // A FIFO would block the reader forever: refused as not a regular file.
    let dir = broken_set(root, "fifo", data::TRAIN_LABELS, |p| {
        std::fs::remove_file(p).unwrap();
        mkfifo(p);
    });
    add("a FIFO", &dir, &[data::TRAIN_LABELS, "not a regular file"]);
    let dir = broken_set(root, "magic", data::TRAIN_IMAGES, |p| {
        rewrite(p, |mut b| {
            b[3] = 0x01;
            b
        })
    });
    add(
        "wrong IDX magic",
        &dir,
        &[data::TRAIN_IMAGES, "wrong IDX magic number 0x00000801"],
    );
    let dir = broken_set(root, "short-header", data::TEST_IMAGES, |p| {
        rewrite(p, |b| b[..10].to_vec())
    });
    add(
        "truncated header",
        &dir,
        &[data::TEST_IMAGES, "truncated header: 10 bytes"],
    );
    let dir = broken_set(root, "short-body", data::TRAIN_IMAGES, |p| {
        rewrite(p, |b| b[..b.len() - 100].to_vec())
    });
    add(
        "truncated body",
        &dir,
        &[data::TRAIN_IMAGES, "truncated", "expected 31376"],
    );
    let dir = broken_set(root, "count", data::TRAIN_LABELS, |p| {
        write_idx(p, &[39], &[1; 39]).unwrap()
    });
    add(
        "image/label count mismatch",
        &dir,
        &["holds 40 images but", data::TRAIN_LABELS, "holds 39 labels"],
    );
    let dir = broken_set(root, "label", data::TEST_LABELS, |p| {
        write_idx(p, &[8], &[1, 2, 3, 12, 4, 5, 6, 7]).unwrap()
    });
    add(
        "label above 9",
        &dir,
        &[data::TEST_LABELS, "label 12 at index 3 is not a digit 0-9"],
    );
    let dir = root.join("shapes");
    small_set(&dir, 28, 14);
    add(
        "train/test image sizes differ",
        &dir,
        &["training images are 28×28 but test images are 14×14"],
    );
    let dir = root.join("small-images");
    small_set(&dir, 14, 14);
    add(
        "images of the wrong size",
        &dir,
        &["images are 14×14", "28×28"],
    );
    let gz = |name: &str, f: fn(Vec<u8>) -> Vec<u8>| {
        let dir = root.join(name);
        small_set(&dir, 28, 28);
        let plain = dir.join(data::TRAIN_IMAGES);
        let bytes = std::fs::read(&plain).unwrap();
        std::fs::remove_file(&plain).unwrap();
        std::fs::write(
            dir.join(format!("{}.gz", data::TRAIN_IMAGES)),
            f(gzip(&bytes)),
        )
        .unwrap();
        dir
    };
    let dir = gz("gz-crc", |mut b| {
        let n = b.len();
        b[n - 8] ^= 0xff; // the CRC32 of the trailer
        b
    });
    add(
        "gzip with a bad CRC",
        &dir,
        &["train-images-idx3-ubyte.gz", "corrupt gzip data"],
    );
    let dir = gz("gz-short", |b| b[..b.len() / 2].to_vec());
    add(
        "truncated gzip stream",
        &dir,
        &["train-images-idx3-ubyte.gz", "corrupt gzip data"],
    );
    // `eval` reads the same directory.
    let model = root.join("m.safetensors");
    modelfile::save_model(&Params::init(&ModelConfig::default(), 1), 0, &model).unwrap();
    let mut c = case(
        "eval with a broken data directory",
        &[
            "eval",
            "--cpu-fallback",
            "--model",
            &s(&model),
            "--data-dir",
        ],
        &[data::TEST_LABELS, "label 12"],
    );
    c.args.push(s(&root.join("label")));
    cases.push(c);
    check(cases);
}

/// Whether wgpu sees any adapter here (Mesa's lavapipe counts).
fn any_adapter() -> bool {
    let out = mnist_gpu(&["adapters".to_string()]);
    out.status.success() && text(&out.stdout).contains("[0]")
}

#[test]
fn bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("out"));
    let flag = |what: &str, extra: &[&str], words: &[&str]| {
        let mut c = case(what, &[], words);
        c.args = train_with(extra, &out);
        c
    };
    let mut cases = vec![
        flag(
            "batch 0",
            &["--batch-size", "0"],
            &["--batch-size", "at least 1"],
        ),
        flag("batch -3", &["--batch-size", "-3"], &["--batch-size"]),
        flag("batch x", &["--batch-size", "x"], &["--batch-size", "'x'"]),
        flag("epochs 0", &["--epochs", "0"], &["--epochs", "at least 1"]),
        flag("lr 0", &["--lr", "0"], &["--lr", "above 0"]),
        flag("lr -1", &["--lr", "-1"], &["--lr", "above 0"]),
        flag("lr NaN", &["--lr", "NaN"], &["--lr", "finite"]),
        flag("lr inf", &["--lr", "inf"], &["--lr", "finite"]),
        flag("lr -inf", &["--lr=-inf"], &["--lr", "finite"]),
        flag("lr word", &["--lr", "fast"], &["--lr", "not a number"]),
        flag("hidden empty", &["--hidden", ""], &["--hidden", "empty"]),
        flag("hidden 0", &["--hidden", "0"], &["--hidden", "at least 1"]),
        flag("hidden abc", &["--hidden", "abc"], &["--hidden", "'abc'"]),
        flag(
            "hidden 128,,64",
            &["--hidden", "128,,64"],
            &["--hidden", "empty layer width"],
        ),
        flag(
            "hidden too wide",
            &["--hidden", "200000"],
            &["--hidden", "200000 is too large"],
        ),
        flag(
            "hidden too many parameters",
            &["--hidden", "65536,65536"],
            &["--hidden", "at most 100000000"],
        ),
        flag(
            "train-limit 0",
            &["--train-limit", "0"],
            &["--train-limit", "at least 1"],
        ),
        flag(
            "test-limit 0",
            &["--test-limit", "0"],
            &["--test-limit", "at least 1"],
        ),
        flag("unknown flag", &["--frobnicate"], &["--frobnicate"]),
        flag(
            "metrics in a missing directory",
            &["--metrics", "/no/such/dir/m.jsonl"],
            &["--metrics", "does not exist", "/no/such/dir/m.jsonl"],
        ),
    ];
    // Device flags (not with --cpu-fallback, which conflicts with them).
    let device = |what: &str, extra: &[&str], words: &[&str], one_line: bool| {
        let mut args: Vec<String> = train_with(extra, &out);
        args.retain(|a| a != "--cpu-fallback");
        Case {
            what: what.to_string(),
            args,
            words: words.iter().map(|s| s.to_string()).collect(),
            one_line,
        }
    };
    cases.push(device(
        "unknown backend",
        &["--backend", "foo"],
        &["unknown --backend value 'foo'", "vulkan, gl, metal, dx12"],
        true,
    ));
    cases.push(flag(
        "--backend with --cpu-fallback",
        &["--backend", "vulkan"],
        &["--backend", "--cpu-fallback"],
    ));
    // With adapters present the error lists them; without, it says there are none.
    // Either way it points at --cpu-fallback.
    let listed: &[&str] = if any_adapter() {
        &["matches no adapter; found:", "[0] "]
    } else {
        &["no GPU adapter"]
    };
    let mut words = vec!["--cpu-fallback"];
    words.extend_from_slice(listed);
    let with = |w: &'static str| {
        let mut v = words.clone();
        v.push(w);
        v
    };
    cases.push(device(
        "adapter index out of range",
        &["--adapter", "99"],
        &with("'99'"),
        false,
    ));
    cases.push(device(
        "adapter name not found",
        &["--adapter", "nosuchgpu"],
        &with("'nosuchgpu'"),
        false,
    ));
    check(cases);
}

/// (file name, description, words the error must hold) of each broken model, written
/// from the valid model `src` into `dir`.
fn broken_models(src: &Path, dir: &Path) -> Vec<(PathBuf, &'static str, Vec<&'static str>)> {
    let keep = |_: &str, d, s, b| Some((d, s, b));
    let path = |name: &str| dir.join(name);
    std::fs::write(path("text.safetensors"), "this is not a model\n").unwrap();
    let bytes = std::fs::read(src).unwrap();
    std::fs::write(path("truncated.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(path("empty.safetensors"), b"").unwrap();
    edit_safetensors(
        src,
        &path("missing.safetensors"),
        |n, d, s, b| (n != "4.bias").then_some((d, s, b)),
        |_| {},
    );
    edit_safetensors(
        src,
        &path("shape.safetensors"),
        |n, d, s, b| {
            if n == "2.weight" {
                Some((d, vec![64, 784], b[..64 * 784 * 4].to_vec()))
            } else {
                Some((d, s, b))
            }
        },
        |_| {},
    );
    edit_safetensors(
        src,
        &path("dtype.safetensors"),
        |n, d, s, b| {
            if n == "1.weight" {
                Some((Dtype::I32, s, b))
            } else {
                Some((d, s, b))
            }
        },
        |_| {},
    );
    edit_safetensors(
        src,
        &path("nan.safetensors"),
        |n, d, s, mut b| {
            if n == "2.bias" {
                b[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
            }
            Some((d, s, b))
        },
        |_| {},
    );
    edit_safetensors(src, &path("arch.safetensors"), keep, |m| {
        m.insert("hidden".into(), "256".into());
    });
    edit_safetensors(src, &path("huge.safetensors"), keep, |m| {
        m.insert("hidden".into(), "60000,60000".into());
    });
    edit_safetensors(src, &path("nometa.safetensors"), keep, |m| {
        m.remove("hidden");
    });
    vec![
        (
            path("text.safetensors"),
            "not safetensors",
            vec!["not a safetensors file"],
        ),
        (
            path("empty.safetensors"),
            "empty",
            vec!["not a safetensors file"],
        ),
        (
            path("truncated.safetensors"),
            "truncated",
            vec!["not a safetensors file"],
        ),
        (
            path("missing.safetensors"),
            "missing tensor",
            vec!["tensor '4.bias' is missing"],
        ),
        (
            path("shape.safetensors"),
            "wrong shape",
            vec!["tensor '2.weight' has shape [64, 784], expected [128, 784]"],
        ),
        (
            path("dtype.safetensors"),
            "wrong dtype",
            vec!["tensor '1.weight' has dtype I32, expected F32"],
        ),
        (
            path("nan.safetensors"),
            "non-finite value",
            vec!["tensor '2.bias' holds a non-finite value (NaN) at index 5"],
        ),
        (
            path("arch.safetensors"),
            "shapes of another architecture",
            vec!["tensor '2.weight' has shape [128, 784], expected [256, 784]"],
        ),
        (
            path("huge.safetensors"),
            "architecture larger than the file",
            vec!["metadata 'hidden'"],
        ),
        (
            path("nometa.safetensors"),
            "no architecture metadata",
            vec!["metadata has no 'hidden' entry"],
        ),
    ]
}

#[test]
fn bad_model_files_for_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let params = Params::init(&ModelConfig::default(), 7);
    let model = root.join("model.safetensors");
    modelfile::save_model(&params, 0, &model).unwrap();
    let checkpoint = root.join("checkpoint-src.safetensors");
    let state = fresh_run_state(&params);
    modelfile::save_checkpoint(&params, &state, &checkpoint).unwrap();
    let digit = data::builtin_dir()
        .parent()
        .unwrap()
        .join("digits")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let models_dir = root.join("models");
    std::fs::create_dir(&models_dir).unwrap();
    let checkpoints_dir = root.join("checkpoints");
    std::fs::create_dir(&checkpoints_dir).unwrap();
    let mut cases = Vec::new();
    for (file, what, words) in broken_models(&model, &models_dir) {
        let name = s(&file);
        let mut with_name = words.clone();
        with_name.push(&name);
        let mk = |cmd: &str, args: Vec<String>| Case {
            what: format!("{cmd}: {what}"),
            args,
            words: with_name.iter().map(|s| s.to_string()).collect(),
            one_line: true,
        };
        cases.push(mk(
            "eval",
            vec![
                "eval".into(),
                "--cpu-fallback".into(),
                "--model".into(),
                name.clone(),
            ],
        ));
        cases.push(mk(
            "predict",
            vec!["predict".into(), "--model".into(), name.clone(), s(&digit)],
        ));
        cases.push(mk(
            "train --init-from",
            train_with(&["--init-from", &name], &s(&root.join("out-init"))),
        ));
    }
    // --resume reads DIR/checkpoint.safetensors: the same damage to a checkpoint.
    for (file, what, words) in broken_models(&checkpoint, &checkpoints_dir) {
        let dir = root.join(format!(
            "resume-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("checkpoint.safetensors");
        std::fs::rename(&file, &target).unwrap();
        let mut words: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        words.push(s(&target));
        cases.push(Case {
            what: format!("train --resume: {what}"),
            args: vec![
                "train".into(),
                "--cpu-fallback".into(),
                "--resume".into(),
                s(&dir),
            ],
            words,
            one_line: true,
        });
    }
    // Checkpoint-only parts: Adam's moments.
    edit_safetensors(
        &checkpoint,
        &root.join("no-adam.safetensors"),
        |n, d, s, b| (n != "adam.v").then_some((d, s, b)),
        |_| {},
    );
    let dir = root.join("resume-no-adam");
    std::fs::create_dir(&dir).unwrap();
    std::fs::rename(
        root.join("no-adam.safetensors"),
        dir.join("checkpoint.safetensors"),
    )
    .unwrap();
    cases.push(case(
        "train --resume: no Adam state",
        &["train", "--cpu-fallback", "--resume", &s(&dir)],
        &["tensor 'adam.v' is missing"],
    ));
    cases.push(case(
        "train --resume: no checkpoint at all",
        &[
            "train",
            "--cpu-fallback",
            "--resume",
            &s(&root.join("models")),
        ],
        &["checkpoint.safetensors", "does not exist"],
    ));
    cases.push(case(
        "eval: missing model",
        &[
            "eval",
            "--cpu-fallback",
            "--model",
            "/no/such/model.safetensors",
        ],
        &["/no/such/model.safetensors", "does not exist"],
    ));
    cases.push(case(
        "eval: model is a directory",
        &["eval", "--cpu-fallback", "--model", &s(root)],
        &["is a directory"],
    ));
    check(cases);
}

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend(crc.sum().to_be_bytes());
}

/// A PNG whose header says `width`×`height`, with no image data after it.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Split a PNG into (IHDR chunk data, concatenated IDAT data).
fn png_parts(png: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut ihdr, mut idat) = (Vec::new(), Vec::new());
    let mut i = 8;
    while i + 8 <= png.len() {
        let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
        let kind = &png[i + 4..i + 8];
        let data = &png[i + 8..i + 8 + len];
        match kind {
            b"IHDR" => ihdr = data.to_vec(),
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        i += 12 + len;
    }
    (ihdr, idat)
}

/// An animated PNG (APNG) of two frames: `first` (also the default image) then `second`.
fn apng(first: &[u8], second: &[u8]) -> Vec<u8> {
    let (ihdr, idat1) = png_parts(first);
    let (_, idat2) = png_parts(second);
    let (w, h) = (&ihdr[0..4], &ihdr[4..8]);
    let fctl = |seq: u32| {
        let mut f = seq.to_be_bytes().to_vec();
        f.extend_from_slice(w);
        f.extend_from_slice(h);
        f.extend([0u8; 8]); // x, y offsets
        f.extend([0, 1, 0, 10, 0, 0]); // delay 1/10 s, dispose none, blend source
        f
    };
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    let mut actl = 2u32.to_be_bytes().to_vec();
    actl.extend(0u32.to_be_bytes());
    chunk(&mut out, b"acTL", &actl);
    chunk(&mut out, b"fcTL", &fctl(0));
    chunk(&mut out, b"IDAT", &idat1);
    chunk(&mut out, b"fcTL", &fctl(1));
    let mut fdat = 2u32.to_be_bytes().to_vec();
    fdat.extend_from_slice(&idat2);
    chunk(&mut out, b"fdAT", &fdat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// An MNIST test digit as a `scale`× larger grey picture, dark ink on white.
fn digit_picture(index: usize, scale: u32) -> image::GrayImage {
    let m = data::Mnist::load(&data::builtin_dir()).unwrap();
    let src = m.test.image(index);
    image::GrayImage::from_fn(28 * scale, 28 * scale, |x, y| {
        image::Luma([255 - src[(y / scale * 28 + x / scale) as usize]])
    })
}

#[test]
fn predict_refuses_bad_pictures_and_handles_odd_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A model that knows digits: trained briefly on the CPU.
    let run = root.join("run");
    let out = mnist_gpu(&train_with(
        &[
            "--train-limit",
            "6000",
            "--test-limit",
            "100",
            "--batch-size",
            "64",
        ],
        &s(&run),
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model = s(&run.join("model.safetensors"));
    let write = |name: &str, bytes: &[u8]| -> String {
        let p = root.join(name);
        std::fs::write(&p, bytes).unwrap();
        s(&p)
    };
    let predict = |what: &str, file: &str, words: &[&str]| {
        let mut words = words.to_vec();
        words.push(file);
        case(what, &["predict", "--model", &model, file], &words)
    };
    let text_file = write("notes.png", b"these are not pixels\n");
    let empty = write("empty.png", b"");
    let zero = write("zero.png", &png_header_only(0, 10));
    let huge = write("huge.png", &png_header_only(100_000, 100_000));
    let tall = write("tall.png", &png_header_only(10, 9000));
    let gif = write("anim.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    let fifo = root.join("pipe.png");
    mkfifo(&fifo);
    let mut broken = png_bytes(&image::DynamicImage::ImageLuma8(digit_picture(0, 2)));
    broken.truncate(broken.len() / 2);
    let truncated = write("truncated.png", &broken);
    let blank = write(
        "blank.png",
        &png_bytes(&image::DynamicImage::ImageLuma8(
            image::GrayImage::from_pixel(40, 40, image::Luma([255])),
        )),
    );
    check(vec![
        predict("missing", "/no/such/digit.png", &["no such file"]),
        predict("not an image", &text_file, &["not a PNG or JPEG"]),
        predict("empty", &empty, &["empty (0 bytes)"]),
        predict("zero-sized", &zero, &["0×10 pixels, which is empty"]),
        predict(
            "huge",
            &huge,
            &["100000×100000", "at most 8192 pixels a side"],
        ),
        predict("too tall", &tall, &["10×9000", "at most 8192"]),
        predict(
            "GIF (animated formats)",
            &gif,
            &["unsupported image format GIF"],
        ),
        predict("a FIFO", &s(&fifo), &["not a regular file"]),
        predict("a directory", &s(root), &["is a directory"]),
        predict("truncated", &truncated, &["truncated"]),
        predict("blank", &blank, &["no ink found"]),
    ]);

    // Handled: 16-bit grey, RGBA with alpha, and an APNG (its default image is used).
    // Test digits 0, 1, 2 of MNIST are a 7, a 2 and a 1.
    let seven = digit_picture(0, 3);
    let sixteen = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(84, 84, |x, y| {
        image::Luma([seven.get_pixel(x, y).0[0] as u16 * 257])
    });
    let two = digit_picture(1, 3);
    let alpha = image::RgbaImage::from_fn(84, 84, |x, y| {
        // Ink opaque black, background fully transparent.
        let ink = 255 - two.get_pixel(x, y).0[0];
        image::Rgba([0, 0, 0, ink])
    });
    let one = digit_picture(2, 3);
    let files = [
        (
            write(
                "sixteen.png",
                &png_bytes(&image::DynamicImage::ImageLuma16(sixteen)),
            ),
            7,
        ),
        (
            write(
                "alpha.png",
                &png_bytes(&image::DynamicImage::ImageRgba8(alpha)),
            ),
            2,
        ),
        (
            write(
                "animated.png",
                &apng(
                    &png_bytes(&image::DynamicImage::ImageLuma8(one)),
                    &png_bytes(&image::DynamicImage::ImageLuma8(seven.clone())),
                ),
            ),
            1,
        ),
    ];
    let mut args = vec![
        "predict".to_string(),
        "--model".into(),
        model.clone(),
        "--json".into(),
    ];
    args.extend(files.iter().map(|(f, _)| f.clone()));
    let out = mnist_gpu(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let predictions: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for ((file, digit), p) in files.iter().zip(&predictions) {
        assert_eq!(p["file"], *file);
        assert_eq!(p["digit"], *digit, "{file}: {p}");
    }
}

#[test]
fn unwritable_outputs_are_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under_file = s(&file.join("run"));
    let model = s(&tmp.path().join("m.safetensors"));
    modelfile::save_model(
        &Params::init(&ModelConfig::default(), 1),
        0,
        Path::new(&model),
    )
    .unwrap();
    check(vec![
        case(
            "--out-dir under a regular file",
            &train_with(&[], &under_file)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &["output directory", &under_file, "is not writable"],
        ),
        case(
            "--out-dir on a read-only file system",
            &train_with(&[], "/proc/mnist-gpu-run")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            &["output directory /proc/mnist-gpu-run is not writable"],
        ),
        case(
            "--confusion-png in a missing directory",
            &[
                "eval",
                "--cpu-fallback",
                "--test-limit",
                "10",
                "--model",
                &model,
                "--confusion-png",
                "/no/such/dir/confusion.png",
            ],
            &["/no/such/dir/confusion.png"],
        ),
    ]);
    // Nothing was trained: the failure came before the data was even read.
    assert!(!file.join("run").exists());
}

/// A model too large for the adapter's storage-binding limit is refused with wgpu's
/// reason and the `--cpu-fallback` hint (lavapipe: 128 MiB bindings; 784 × 65536 f32 is
/// 196 MiB).
#[test]
fn gpu_model_too_large_for_the_adapter() {
    if !any_adapter() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no GPU adapter, and CI is set"
        );
        eprintln!("gpu_model_too_large_for_the_adapter: SKIPPED: no GPU adapter");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("out"));
    let mut args = train_with(&["--hidden", "65536", "--adapter", "vulkan"], &out);
    args.retain(|a| a != "--cpu-fallback");
    let mut c = case(
        "--hidden 65536 on the GPU",
        &[],
        &["GPU error", "create_buffer", "--cpu-fallback"],
    );
    c.args = args;
    check(vec![c]);
}
