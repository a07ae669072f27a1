//! Hostile and careless invocations: changed settings on resume, absurd thread counts and
//! sizes, a moved data directory, leftovers of a killed run, two runs in one directory, bad
//! config values and unreadable images. Each must end in a clear error (never a panic or a
//! hang) that loses nothing already saved.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, s, scratch, write_config};
use depthshrink_nn::checkpoint;

/// A tiny run on the synthetic set: a width-0.25 CIFAR-layout net, 4 batches of 16, 1 epoch.
const TINY: &str = r#"
epochs = 1
seed = 5
checkpoint_every = 2
[model]
width = 0.25
cifar = true
dropout = 0.0
[data]
batch_size = 16
limit_train = 64
limit_test = 32
cache = true
[optim]
optimizer = "sgd"
momentum = 0.9
weight_decay = 5e-4
[lr]
schedule = "cosine"
lr = 0.05
"#;

/// A 32×32 RGB PNG of one colour.
const PNG: &[u8] = b"\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x20\x00\x00\x00\x20\x08\x02\x00\x00\x00\xfc\x18\xed\xa3\x00\x00\x00\x2a\x49\x44\x41\x54\x78\xda\x63\x38\xa1\x11\x45\x53\xc4\x30\x6a\xc1\xa8\x05\xa3\x16\x8c\x5a\x30\x6a\xc1\xa8\x05\xa3\x16\x8c\x5a\x30\x6a\xc1\xa8\x05\xa3\x16\x0c\x15\x0b\x00\x19\x3a\x28\x4c\x10\xad\x8e\x45\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82";

/// Runs the binary, killing it (and failing) if it takes longer than a minute: a hang is a
/// defect too.
fn run_in(cwd: Option<&Path>, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = bin();
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().expect("the binary runs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn run(args: &[&str]) -> Output {
    run_in(None, &[], args)
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with every needle in its error, no panic, no Debug form; returns the error.
fn fails_with(out: Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    assert!(!err.contains("panicked"), "panicked: {err}");
    assert!(!err.contains(" { "), "Debug form in: {err}");
    err
}

/// Trains the tiny config to its end in `out`.
fn train(config: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "--threads",
        "2",
        "train",
        "--config",
        config,
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// A CIFAR-10 binary directory: `per_file` records in each train batch and in the test batch.
fn write_cifar(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let names = [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ];
    for (f, name) in names.iter().enumerate() {
        let mut bytes = Vec::new();
        for i in 0..per_file {
            let label = (i + f) % 10;
            bytes.push(label as u8);
            bytes.extend((0..3072).map(|p| ((p * 7 + label * 25) % 256) as u8));
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Class folders `train/{a,b}` and `test/{a,b}` of `n` 32×32 PNGs each.
fn write_folders(dir: &Path, n: usize) {
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                std::fs::write(d.join(format!("{i:03}.png")), PNG).unwrap();
            }
        }
    }
}

#[test]
fn resume_refuses_changed_settings_and_keeps_the_run_intact() {
    let dir = scratch("resume-settings");
    let config = write_config(&dir, TINY);
    let out = dir.join("run");
    train(&config, &out, &[]);
    let last = out.join("last.safetensors");
    let (ckpt_before, config_before) = (
        std::fs::read(&last).unwrap(),
        std::fs::read(out.join("config.toml")).unwrap(),
    );

    let resume = |extra: &[&str]| {
        let mut args = vec![
            "--threads",
            "2",
            "train",
            "--config",
            &config,
            "--out",
            s(&out),
            "--resume",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let err = fails_with(
        resume(&["--set", "lr.lr=0.1", "--set", "epochs=3"]),
        &["`lr.lr` was 0.05, now 0.1", "`epochs` was 1, now 3"],
    );
    assert!(err.contains("config.toml"), "{err}");
    fails_with(
        resume(&["--set", "optim.nesterov=true"]),
        &["`optim.nesterov` was false, now true"],
    );
    assert_eq!(std::fs::read(&last).unwrap(), ckpt_before);
    assert_eq!(
        std::fs::read(out.join("config.toml")).unwrap(),
        config_before
    );

    // How fast it runs may change: threads, prefetch, caching, checkpoint interval.
    let out_ok = resume(&[
        "--set",
        "threads=1",
        "--set",
        "data.prefetch=4",
        "--set",
        "data.cache=false",
        "--set",
        "checkpoint_every=0",
    ]);
    assert!(
        out_ok.status.success(),
        "{}",
        String::from_utf8_lossy(&out_ok.stderr)
    );
}

#[test]
fn finetune_records_its_teacher_and_refuses_another_on_resume() {
    let dir = scratch("teacher");
    let config = write_config(&dir, TINY);
    let (a, b) = (dir.join("a"), dir.join("b"));
    train(&config, &a, &[]);
    train(&config, &b, &["--set", "seed=6"]);
    let (wa, wb) = (a.join("last.safetensors"), b.join("last.safetensors"));
    let keep = "1,1,0,0,1,0,1,0,1,1,0,1,0,1,1,0,1,1,1";
    let ft = dir.join("ft");
    let finetune = |weights: &Path, resume: bool| {
        let mut args = vec![
            "--threads",
            "2",
            "finetune",
            "--config",
            &config,
            "--pretrained",
            s(weights),
            "--keep",
            keep,
            "--distill",
            "--out",
            s(&ft),
        ];
        if resume {
            args.push("--resume");
        }
        run(&args)
    };
    assert!(finetune(&wa, false).status.success());
    let meta = checkpoint::load(ft.join("last.safetensors"))
        .unwrap()
        .metadata;
    let teacher = &meta["extra"]["pretrained"];
    assert_eq!(teacher["path"], s(&wa));
    let fingerprint = teacher["fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("fnv1a64:"), "{fingerprint}");

    let before = std::fs::read(ft.join("last.safetensors")).unwrap();
    fails_with(
        finetune(&wb, true),
        &[s(&wa), s(&wb), &fingerprint, "--pretrained"],
    );
    assert_eq!(std::fs::read(ft.join("last.safetensors")).unwrap(), before);

    // The same weights from another path are the same teacher.
    let copy = dir.join("copy.safetensors");
    std::fs::copy(&wa, &copy).unwrap();
    let out = finetune(&copy, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A fresh finetune whose config describes another network names both readably.
    let wide = write_config(&dir, &TINY.replace("width = 0.25", "width = 0.5"));
    fails_with(
        run(&[
            "finetune",
            "--config",
            &wide,
            "--pretrained",
            s(&wa),
            "--keep",
            keep,
            "--out",
            s(&dir.join("ft-wide")),
        ]),
        &["MobileNetV2 w0.25, CIFAR layout, 10 classes"],
    );
}

#[test]
fn resume_on_data_with_other_classes_names_both_architectures() {
    let dir = scratch("resume-arch");
    let config = write_config(&dir, TINY);
    let (cifar, folders) = (dir.join("cifar"), dir.join("folders"));
    write_cifar(&cifar, 16);
    write_folders(&folders, 8);
    let out = dir.join("run");
    train(&config, &out, &["--data", s(&cifar)]);
    // A moved data directory is allowed on resume; this one has 2 classes, not 10.
    fails_with(
        run(&[
            "train",
            "--config",
            &config,
            "--data",
            s(&folders),
            "--out",
            s(&out),
            "--resume",
        ]),
        &[
            "it holds a MobileNetV2 w0.25, CIFAR layout, 10 classes",
            "the config describes a MobileNetV2 w0.25, CIFAR layout, 2 classes",
        ],
    );
}

#[test]
fn thread_counts_are_checked_against_the_machine() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let too_many = (4 * cores + 1).to_string();
    let start = Instant::now();
    fails_with(
        run(&["--threads", "100000", "flops"]),
        &["--threads 100000", "at most 4 ×"],
    );
    assert!(start.elapsed() < Duration::from_secs(10), "slow refusal");
    fails_with(run(&["--threads", "0", "flops"]), &["at least 1"]);
    fails_with(
        run(&["--threads", &too_many, "flops"]),
        &[&format!("{cores} cores")],
    );
    fails_with(
        run_in(
            None,
            &[("RAYON_NUM_THREADS", too_many.as_str())],
            &["flops"],
        ),
        &["RAYON_NUM_THREADS"],
    );
    let dir = scratch("threads");
    let config = write_config(&dir, &format!("threads = {too_many}\n{TINY}"));
    fails_with(
        run(&["train", "--config", &config, "--out", s(&dir.join("run"))]),
        &[&format!("threads = {too_many} in the config")],
    );
    assert!(ok(&["--threads", "1", "flops"]).contains("multiply-adds"));
}

#[test]
fn data_overrides_a_shipped_configs_missing_data_dir() {
    let dir = scratch("data-override");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/cifar10-mbv2-w0.5.toml"
    );
    // The config's data.dir, "../shared/data/cifar10", is relative to the working directory.
    let cwd = dir.join("work");
    std::fs::create_dir_all(&cwd).unwrap();
    assert!(!cwd.join("../shared/data/cifar10").exists());
    let data = dir.join("cifar");
    write_cifar(&data, 16);
    let out = run_in(
        Some(&cwd),
        &[],
        &[
            "--threads",
            "2",
            "train",
            "--config",
            shipped,
            "--data",
            s(&data),
            "--set",
            "epochs=1",
            "--set",
            "model.width=0.25",
            "--set",
            "data.batch_size=16",
            "--set",
            "data.eval_batch_size=16",
            "--set",
            "data.limit_train=32",
            "--set",
            "data.limit_test=16",
            "--set",
            "lr.warmup_epochs=0",
            "--out",
            s(&dir.join("run")),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert!(recorded.contains(s(&data)), "{recorded}");
    // Without --data the missing directory is still named.
    fails_with(
        run_in(
            Some(&cwd),
            &[],
            &["train", "--config", shipped, "--out", s(&dir.join("run2"))],
        ),
        &["../shared/data/cifar10"],
    );
}

#[test]
fn flops_refuses_impossible_inputs() {
    let dir = scratch("flops");
    fails_with(
        run(&["flops", "--res", "4000000000"]),
        &["too large to count"],
    );
    fails_with(run(&["flops", "--width", "1e9"]), &["too large to count"]);
    fails_with(run(&["flops", "--res", "0"]), &["--res must be at least 1"]);
    fails_with(
        run(&["flops", "--model", "efficientnet_lite0", "--width", "0.5"]),
        &["--width 0.5 is for MobileNetV2"],
    );

    let d = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/mbv2-140-D.toml");
    let text = std::fs::read_to_string(d).unwrap();
    let two = dir.join("two.toml");
    std::fs::write(&two, text.replacen("keep = [0", "keep = [2", 1)).unwrap();
    fails_with(
        run(&["flops", "--config", s(&two)]),
        &["keep[0] = 2 is not 0 or 1", "two.toml"],
    );
    fails_with(
        run(&["flops", "--config", d, "--width", "0.5"]),
        &[
            "--width 0.5 contradicts",
            "mbv2-140-D.toml",
            "MobileNetV2 w1.4",
        ],
    );
    fails_with(run(&["flops", "--config", d, "--cifar"]), &["--cifar"]);
    // Flags that agree with the table are fine.
    let agree = ok(&["flops", "--config", d, "--width", "1.4"]);
    assert!(agree.contains("484.25 MFLOPs"), "{agree}");
}

#[test]
fn a_run_killed_before_its_first_save_restarts_cleanly() {
    let dir = scratch("first-save");
    let config = write_config(&dir, TINY);
    let out = dir.join("run");
    // What a kill during the first checkpoint save leaves.
    std::fs::create_dir_all(&out).unwrap();
    let temps = [
        out.join(".last.safetensors.999999.0.tmp"),
        out.join(".best.safetensors.999999.1.tmp"),
        out.join(".metrics.jsonl.999999.2.tmp"),
    ];
    for t in &temps {
        std::fs::write(t, b"partial").unwrap();
    }
    std::fs::write(out.join("config.toml"), TINY).unwrap();
    let err = fails_with(
        run(&["train", "--config", &config, "--out", s(&out), "--resume"]),
        &["has no checkpoint yet", "without --resume"],
    );
    assert!(!err.contains("no such file"), "{err}");
    fails_with(
        run(&[
            "train",
            "--config",
            &config,
            "--out",
            s(&dir.join("never")),
            "--resume",
        ]),
        &["there is no run in", "without --resume"],
    );

    train(&config, &out, &[]);
    for t in &temps {
        assert!(!t.exists(), "{} left behind", t.display());
    }
    assert!(out.join("last.safetensors").exists());
}

/// A child process killed when the test ends, passed or failed.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_runs_cannot_write_one_directory() {
    let dir = scratch("lock");
    let config = write_config(&dir, &TINY.replace("epochs = 1", "epochs = 50"));
    let out = dir.join("run");

    // A run holds the directory's lock while it trains, and the OS drops it when it dies.
    let child = bin()
        .args([
            "--threads",
            "2",
            "train",
            "--config",
            &config,
            "--out",
            s(&out),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let start = Instant::now();
    while !out.join("last.safetensors").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let lock = File::options().write(true).open(out.join(".lock")).unwrap();
    assert!(
        lock.try_lock().is_err(),
        "the running run does not hold its lock"
    );
    // A second run on the same directory, even a resume, is refused naming it.
    fails_with(
        run(&["train", "--config", &config, "--out", s(&out), "--resume"]),
        &[&format!("{} is in use by another run", out.display())],
    );
    child.0.kill().unwrap();
    assert!(
        !child.0.wait().unwrap().success(),
        "finished before the kill"
    );
    lock.try_lock().expect("the killed run's lock is released");

    // While something holds the lock, a fresh run there is refused and writes nothing.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let held = File::create(fresh.join(".lock")).unwrap();
    held.try_lock().unwrap();
    fails_with(
        run(&["train", "--config", &config, "--out", s(&fresh)]),
        &["is in use by another run", s(&fresh)],
    );
    assert!(!fresh.join("config.toml").exists());
    drop(held);
}

#[test]
fn config_values_are_checked_by_their_own_name() {
    let dir = scratch("values");
    let config = write_config(&dir, TINY);
    let out = dir.join("run");
    let err = fails_with(
        run(&[
            "train",
            "--config",
            &config,
            "--set",
            "lr.lr=-0.1",
            "--out",
            s(&out),
        ]),
        &["lr.lr"],
    );
    assert!(!err.contains("min_lr"), "{err}");
    fails_with(
        run(&[
            "train",
            "--config",
            &config,
            "--set",
            "optim.momentum=5",
            "--out",
            s(&out),
        ]),
        &["momentum must be in [0, 1), got 5"],
    );
    assert!(!out.exists());
}

#[test]
fn data_inspect_names_unreadable_files_and_strict_fails() {
    let dir = scratch("inspect");
    write_folders(&dir, 2);
    for i in 0..23 {
        std::fs::write(dir.join(format!("train/b/bad{i:02}.png")), b"broken").unwrap();
    }
    let args = [
        "data",
        "inspect",
        "--data",
        s(&dir),
        "--throughput-images",
        "0",
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("23 unreadable images:"), "{stdout}");
    let first = dir.join("train/b/bad00.png");
    assert!(
        stdout.contains(&format!("{}: cannot decode image", first.display())),
        "{stdout}"
    );
    assert!(stdout.contains("bad19.png"), "{stdout}");
    assert!(!stdout.contains("bad20.png"), "{stdout}");
    assert!(stdout.contains("and 3 more"), "{stdout}");

    let mut strict = args.to_vec();
    strict.push("--strict");
    fails_with(run(&strict), &["23 unreadable images", "--strict"]);
    strict.push("--json");
    let out = run(&strict);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["splits"][0]["bad"][0]["path"], s(&first));
}
