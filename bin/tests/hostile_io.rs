//! Hostile and careless invocations: outputs that are inputs, symlinks in the way, large,
//! non-finite or mistyped inputs, half-written metrics, bad numbers and damaged networks.
//! Each must end in a clear error naming the culprit (never a panic) and lose nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::scratch;
use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::checkpoint;
use depthshrink_nn::module::state_dict;
use depthshrink_nn::network::Network;
use depthshrink_tensor::Tensor;
use serde_json::Value;

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_depthshrink"))
        .args(["--threads", "1"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn ok_in(dir: &Path, args: &[&str]) -> Output {
    let out = run_in(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {err}");
    out
}

fn fails_in(dir: &Path, args: &[&str], needle: &str) {
    let out = run_in(dir, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// The architecture of the test network: small, CIFAR layout, 10 classes (the synthetic set's).
fn arch() -> ArchConfig {
    ArchConfig::mobilenet_v2(0.35, 10, true)
}

/// Saves the test network, with its architecture in the metadata unless `bare` (like a
/// torchvision export), after `damage` has had its way with the tensors.
fn network(path: &Path, bare: bool, damage: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut net = Network::new(&arch(), 5);
    let mut state = state_dict(&mut net);
    damage(&mut state);
    let meta = if bare { Value::Null } else { net.metadata() };
    checkpoint::save(path, &state, &meta).unwrap();
}

/// `n` deterministic 32×32 images in [-2, 2] as `input`.
fn images(path: &Path, n: usize, damage: impl FnOnce(&mut [f32])) {
    let mut state = 12345u32;
    let mut data: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    damage(&mut data);
    let input = Tensor::from_vec(&[n, 3, 32, 32], data).unwrap();
    checkpoint::save(path, &[("input".into(), input)], &Value::Null).unwrap();
}

fn epoch_line(epoch: usize) -> String {
    format!(
        r#"{{"epoch":{epoch},"train_loss":1.5,"train_acc":0.4,"val_loss":1.2,"val_acc":0.5,"val_top5":0.9,"lr":0.1,"seconds":3.0,"eval_seconds":0.5,"images_per_s":100.0,"images":300}}"#
    )
}

#[test]
fn outputs_that_resolve_to_an_input_are_refused_and_the_input_survives() {
    let dir = scratch("same-file");
    network(&dir.join("net.safetensors"), false, |_| {});
    images(&dir.join("in.safetensors"), 2, |_| {});
    std::fs::create_dir(dir.join("run")).unwrap();
    std::fs::write(dir.join("run/metrics.jsonl"), epoch_line(1) + "\n").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("in.safetensors", dir.join("alias.safetensors")).unwrap();
    let before = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (net, input, metrics) = (
        before("net.safetensors"),
        before("in.safetensors"),
        before("run/metrics.jsonl"),
    );
    let infer = [
        "infer",
        "--weights",
        "net.safetensors",
        "--input",
        "in.safetensors",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&infer[..], &["--output", "./net.safetensors"]].concat(),
            "--output ./net.safetensors is the same file as --weights net.safetensors",
        ),
        (
            [&infer[..], &["--output", "run/../in.safetensors"]].concat(),
            "is the same file as --input in.safetensors",
        ),
        (
            vec![
                "eval",
                "--weights",
                "net.safetensors",
                "--confusion",
                "net.safetensors",
            ],
            "--confusion net.safetensors is the same file as --weights",
        ),
        (
            vec![
                "merge",
                "--weights",
                "net.safetensors",
                "--keep",
                "0,0,0,0,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1",
                "--out",
                "./net.safetensors",
            ],
            "--out ./net.safetensors is the same file as --weights",
        ),
        (
            vec!["plot", "run", "--out", "run/metrics.jsonl"],
            "--out run/metrics.jsonl is the same file as input run/metrics.jsonl",
        ),
    ];
    for (args, needle) in &cases {
        fails_in(&dir, args, needle);
    }
    #[cfg(unix)]
    fails_in(
        &dir,
        &[&infer[..], &["--output", "alias.safetensors"]].concat(),
        "is the same file as --input",
    );
    assert_eq!(before("net.safetensors"), net);
    assert_eq!(before("in.safetensors"), input);
    assert_eq!(before("run/metrics.jsonl"), metrics);
    // A fresh output is fine.
    ok_in(
        &dir,
        &[&infer[..], &["--output", "out.safetensors"]].concat(),
    );
}

#[cfg(unix)]
#[test]
fn an_output_that_is_a_symlink_is_refused_not_replaced() {
    let dir = scratch("symlink-out");
    std::fs::write(dir.join("metrics.jsonl"), epoch_line(1) + "\n").unwrap();
    std::fs::write(dir.join("precious.txt"), b"keep me").unwrap();
    std::os::unix::fs::symlink("precious.txt", dir.join("plot.svg")).unwrap();
    fails_in(
        &dir,
        &["plot", "metrics.jsonl", "--out", "plot.svg"],
        "cannot write plot.svg: it exists and is a symbolic link, not a regular file",
    );
    let link = std::fs::symlink_metadata(dir.join("plot.svg")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(std::fs::read(dir.join("precious.txt")).unwrap(), b"keep me");
}

#[test]
fn infer_runs_in_chunks_and_gives_the_unchunked_logits_exactly() {
    let dir = scratch("chunks");
    network(&dir.join("net.safetensors"), false, |_| {});
    images(&dir.join("in.safetensors"), 7, |_| {});
    let logits = |batch: &str, out: &str| {
        ok_in(
            &dir,
            &[
                "infer",
                "--weights",
                "net.safetensors",
                "--input",
                "in.safetensors",
                "--output",
                out,
                "--batch",
                batch,
            ],
        );
        checkpoint::load(dir.join(out)).unwrap().tensors["logits"].clone()
    };
    let whole = logits("256", "whole.safetensors");
    assert_eq!(whole.shape(), [7, 10]);
    // Chunks of 3+4, 2+2+3, 4+3 (and 1 counts as 2).
    for batch in ["3", "2", "4", "1"] {
        let chunked = logits(batch, &format!("chunked-{batch}.safetensors"));
        assert_eq!(chunked, whole, "--batch {batch}");
    }
    fails_in(
        &dir,
        &[
            "infer",
            "--weights",
            "net.safetensors",
            "--input",
            "in.safetensors",
            "--output",
            "x",
            "--batch",
            "0",
        ],
        "--batch must be at least 1",
    );
}

#[test]
fn infer_refuses_non_finite_and_non_f32_inputs_by_name() {
    let dir = scratch("bad-input");
    network(&dir.join("net.safetensors"), false, |_| {});
    // Image 1, channel 2, row 3, column 4.
    let at = 3 * 32 * 32 + 2 * 32 * 32 + 3 * 32 + 4;
    images(&dir.join("nan.safetensors"), 2, |d| d[at] = f32::NAN);
    images(&dir.join("inf.safetensors"), 2, |d| {
        d[5] = f32::NEG_INFINITY
    });
    let infer = |input: &str, needle: &str| {
        fails_in(
            &dir,
            &[
                "infer",
                "--weights",
                "net.safetensors",
                "--input",
                input,
                "--output",
                "out.safetensors",
            ],
            needle,
        );
    };
    infer(
        "nan.safetensors",
        &format!("nan.safetensors: `input` holds NaN at [1, 2, 3, 4] (flat index {at})"),
    );
    infer(
        "inf.safetensors",
        "inf.safetensors: `input` holds -inf at [0, 0, 0, 5]",
    );

    // A safetensors file by hand: F64 values, which the loader does not convert.
    let header = br#"{"input":{"dtype":"F64","shape":[1,3,2,2],"data_offsets":[0,96]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend(std::iter::repeat_n(0u8, 96));
    std::fs::write(dir.join("f64.safetensors"), bytes).unwrap();
    infer(
        "f64.safetensors",
        "--input f64.safetensors: tensor `input` holds F64 values; an input must be f32",
    );
    assert!(!dir.join("out.safetensors").exists());
}

#[test]
fn plot_draws_a_live_run_and_names_the_half_written_line() {
    let dir = scratch("live-plot");
    let text = format!(
        "{}\n{}\n{}",
        epoch_line(1),
        epoch_line(2),
        r#"{"epoch":3,"train_lo"#
    );
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
    let out = ok_in(&dir, &["plot", "metrics.jsonl", "--out", "live.svg"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.jsonl: skipped 1 incomplete line (3)"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(dir.join("live.svg"))
            .unwrap()
            .contains("<svg")
    );
    for bad in ["nan", "1e308", "-5", "inf"] {
        fails_in(
            &dir,
            &["plot", "metrics.jsonl", &format!("--reference={bad}")],
            "must be a percentage from 0 to 100",
        );
    }
}

#[test]
fn careless_arguments_get_messages_that_say_what_is_wrong() {
    let dir = scratch("messages");
    network(&dir.join("net.safetensors"), false, |_| {});
    images(&dir.join("in.safetensors"), 1, |_| {});
    fails_in(
        &dir,
        &[
            "infer",
            "--weights",
            "net.safetensors",
            "--input",
            "in.safetensors",
            "--output",
            "out.safetensors",
            "--keep",
            "runs/x/search.json",
        ],
        "--keep: runs/x/search.json does not exist",
    );
    fails_in(
        &dir,
        &["latency", "--width", "0.35", "--cifar", "--runs", "0"],
        "--runs must be at least 1",
    );
}

#[test]
fn eval_refuses_damaged_networks_by_tensor_name() {
    let dir = scratch("damaged");
    let damage = |name: &'static str, value: f32| {
        move |state: &mut Vec<(String, Tensor)>| {
            let t = &mut state.iter_mut().find(|(n, _)| n == name).unwrap().1;
            t.data_mut()[1] = value;
        }
    };
    network(
        &dir.join("nan.safetensors"),
        false,
        damage("features.2.conv.1.0.weight", f32::NAN),
    );
    network(
        &dir.join("var.safetensors"),
        false,
        damage("features.3.conv.0.1.running_var", -1.0),
    );
    fails_in(
        &dir,
        &["eval", "--weights", "nan.safetensors", "--limit", "4"],
        "tensor `features.2.conv.1.0.weight` holds NaN at flat index 1",
    );
    fails_in(
        &dir,
        &["eval", "--weights", "var.safetensors", "--limit", "4"],
        "tensor `features.3.conv.0.1.running_var` holds the negative running variance -1",
    );
}

#[test]
fn eval_refuses_architecture_flags_that_contradict_the_file() {
    let dir = scratch("arch-flags");
    network(&dir.join("net.safetensors"), false, |_| {});
    network(&dir.join("bare.safetensors"), true, |_| {});
    let stored = "stored in net.safetensors (MobileNetV2 w0.35, CIFAR layout, 10 classes)";
    for (flags, flag) in [
        (&["--width", "1.0"][..], "--width 1 contradicts"),
        (
            &["--num-classes", "100"][..],
            "--num-classes 100 contradicts",
        ),
        (
            &["--model", "efficientnet_lite0"][..],
            "--model efficientnet_lite0 contradicts",
        ),
    ] {
        let args = [
            &["eval", "--weights", "net.safetensors", "--limit", "4"][..],
            flags,
        ]
        .concat();
        fails_in(&dir, &args, flag);
        fails_in(&dir, &args, stored);
    }
    // Flags that agree with the file, and flags describing a file without metadata, still work.
    let agree = ["--width", "0.35", "--num-classes", "10", "--cifar"];
    for weights in ["net.safetensors", "bare.safetensors"] {
        let args = [&["eval", "--weights", weights, "--limit", "4"][..], &agree].concat();
        ok_in(&dir, &args);
    }
}
