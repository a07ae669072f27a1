//! `depthshrink train` and `depthshrink eval` end to end: real processes killed and resumed,
//! divergence, config errors, evaluation outputs.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bin, run, s, scratch, stderr, write_config};
use depthshrink_nn::checkpoint;
use serde_json::Value;

/// A tiny run: width-0.25 CIFAR net, 256 synthetic images in batches of 16, 2 epochs,
/// a checkpoint every 3 batches. Dropout and augmentation on, so their streams are tested too.
const TINY: &str = r#"
epochs = 2
seed = 7
label_smoothing = 0.1
checkpoint_every = 3
[model]
width = 0.25
cifar = true
dropout = 0.2
[data]
batch_size = 16
limit_train = 256
limit_test = 64
cache = true
[optim]
optimizer = "sgd"
momentum = 0.9
nesterov = true
weight_decay = 5e-4
[lr]
schedule = "cosine"
lr = 0.05
warmup_epochs = 0.5
"#;

#[test]
fn a_killed_and_resumed_run_ends_bit_identical_to_an_uninterrupted_one() {
    let dir = scratch("resume");
    let config = write_config(&dir, TINY);
    let (full, killed) = (dir.join("full"), dir.join("killed"));

    let out = run(&[
        "--threads",
        "2",
        "train",
        "--config",
        &config,
        "--out",
        s(&full),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("epoch 2/2"), "{stdout}");

    // Start the same run, kill it as soon as its first mid-epoch checkpoint exists.
    let mut child = bin()
        .args([
            "--threads",
            "2",
            "train",
            "--config",
            &config,
            "--out",
            s(&killed),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let last = killed.join("last.safetensors");
    let start = Instant::now();
    while !last.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the run finished before it could be killed"
    );
    let meta = checkpoint::load(&last).unwrap().metadata;
    let (epoch, batch) = (
        meta["epoch"].as_u64().unwrap(),
        meta["batch"].as_u64().unwrap(),
    );
    assert!(epoch < 2, "killed after the end");

    // Resuming a directory without --resume is refused; with it, the run completes.
    let out = run(&[
        "--threads",
        "2",
        "train",
        "--config",
        &config,
        "--out",
        s(&killed),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    let out = run(&[
        "--threads",
        "2",
        "train",
        "--config",
        &config,
        "--out",
        s(&killed),
        "--resume",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("resumed at epoch {} batch {batch}", epoch + 1)),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Every tensor (weights, BN statistics, optimiser state) bit for bit.
    let a = checkpoint::load(full.join("last.safetensors")).unwrap();
    let b = checkpoint::load(&last).unwrap();
    assert_eq!(
        a.tensors.keys().collect::<Vec<_>>(),
        b.tensors.keys().collect::<Vec<_>>()
    );
    assert!(a.tensors.keys().any(|k| k.starts_with("optim.")));
    assert!(a.tensors.keys().any(|k| k.ends_with("running_var")));
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        let same = ta
            .data()
            .iter()
            .zip(tb.data())
            .all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{name} differs after resume");
    }
    for key in [
        "epoch",
        "batch",
        "global_step",
        "best_val_acc",
        "arch",
        "variant",
    ] {
        assert_eq!(a.metadata[key], b.metadata[key], "{key}");
    }
    assert_eq!(a.metadata["epoch"], 2);
    assert_eq!(a.metadata["global_step"], 32);

    // metrics.jsonl: one line per epoch in both runs, with the same accuracies.
    let lines = |d: &Path| -> Vec<Value> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (la, lb) = (lines(&full), lines(&killed));
    assert_eq!(la.len(), 2);
    assert_eq!(lb.len(), 2);
    for (x, y) in la.iter().zip(&lb) {
        for key in [
            "epoch",
            "train_loss",
            "train_acc",
            "val_loss",
            "val_acc",
            "lr",
            "images",
        ] {
            assert_eq!(x[key], y[key], "{key}");
        }
    }
    for key in ["seconds", "images_per_s", "val_acc"] {
        assert!(la[1][key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(full.join("best.safetensors").exists());
    assert!(full.join("config.toml").exists());

    // eval on the same 64 test images reproduces the best epoch's validation accuracy.
    let best_acc = la
        .iter()
        .filter_map(|m| m["val_acc"].as_f64())
        .fold(0f64, f64::max);
    let csv = dir.join("confusion.csv");
    let out = run(&[
        "eval",
        "--weights",
        s(&full.join("best.safetensors")),
        "--limit",
        "64",
        "--json",
        "--confusion",
        s(&csv),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 64);
    assert!(
        (v["top1"].as_f64().unwrap() - best_acc).abs() < 1e-9,
        "{v} vs {best_acc}"
    );
    assert!(v["top5"].as_f64().unwrap() >= v["top1"].as_f64().unwrap());
    assert!(v["loss"].as_f64().unwrap().is_finite());
    let csv = std::fs::read_to_string(csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 11);
    assert!(
        rows[0].starts_with("true\\predicted,disc,ring"),
        "{}",
        rows[0]
    );
    let total: u64 = rows[1..]
        .iter()
        .flat_map(|r| r.split(',').skip(1))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 64);
    let hits: u64 = rows[1..]
        .iter()
        .enumerate()
        .map(|(i, r)| r.split(',').nth(i + 1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!((hits as f64 / 64.0 - best_acc).abs() < 1e-9);

    // `strip` keeps the network and its metadata, drops the optimiser state.
    let stripped = dir.join("stripped.safetensors");
    let out = run(&[
        "strip",
        s(&full.join("last.safetensors")),
        "--out",
        s(&stripped),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = checkpoint::load(&stripped).unwrap();
    assert!(!c.tensors.keys().any(|k| k.starts_with("optim.")));
    assert_eq!(c.metadata, a.metadata);
    for (name, t) in &c.tensors {
        assert_eq!(t.data(), a.tensors[name].data(), "{name}");
    }
    assert_eq!(
        c.tensors.len(),
        a.tensors
            .keys()
            .filter(|k| !k.starts_with("optim."))
            .count()
    );
}

#[test]
fn a_diverging_run_stops_naming_the_batch_and_keeps_finite_weights() {
    let dir = scratch("nan");
    let config = write_config(
        &dir,
        &TINY
            .replace("checkpoint_every = 3", "checkpoint_every = 1")
            .replace(
                "schedule = \"cosine\"\nlr = 0.05\nwarmup_epochs = 0.5",
                "schedule = \"constant\"\nlr = 1e30",
            ),
    );
    let out_dir = dir.join("out");
    let out = run(&[
        "--threads",
        "2",
        "train",
        "--config",
        &config,
        "--out",
        s(&out_dir),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("diverged at epoch 1, batch"), "{err}");
    assert!(err.contains("non-finite"), "{err}");
    let last = out_dir.join("last.safetensors");
    if last.exists() {
        let ckpt = checkpoint::load(&last).unwrap();
        for (name, t) in &ckpt.tensors {
            assert!(
                t.data().iter().all(|v| v.is_finite()),
                "{name} is not finite in the kept checkpoint"
            );
        }
    }
}

#[test]
fn bad_configs_fail_before_any_work_naming_the_problem() {
    let dir = scratch("badcfg");
    let out_dir = dir.join("out");
    let check = |config_text: &str, extra: &[&str], want: &str| {
        let config = write_config(&dir, config_text);
        let mut args = vec!["train", "--config", &config, "--out", s(&out_dir)];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(!out.status.success(), "{want}");
        assert!(
            stderr(&out).contains(want),
            "want `{want}` in: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("panicked"));
        assert!(
            !out_dir.exists(),
            "output written for a bad config ({want})"
        );
    };
    check(&format!("bogus_key = 1\n{TINY}"), &[], "bogus_key");
    check(
        &TINY.replace("[data]", "[data]\ncolour = true"),
        &[],
        "colour",
    );
    check(
        &TINY.replace("epochs = 2", "epochs = \"two\""),
        &[],
        "epochs",
    );
    check(
        TINY,
        &["--set", "data.batch_size=0"],
        "data.batch_size must be at least 1",
    );
    check(TINY, &["--set", "model.bogus=1"], "bogus");
    check(TINY, &["--set", "epochs=true"], "invalid type");
    check(
        TINY,
        &["--data", "/nonexistent/cifar-dir"],
        "/nonexistent/cifar-dir",
    );
    check(TINY, &["--set", "optim.momentum=-1"], "optim");
    check(TINY, &["--set", "noequals"], "KEY=VALUE");

    let out = run(&["train", "--config", s(&dir.join("missing.toml"))]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));

    let out = run(&["eval", "--weights", s(&dir.join("missing.safetensors"))]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("missing.safetensors"),
        "{}",
        stderr(&out)
    );
}
