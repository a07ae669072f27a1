//! The DepthShrinker stages end to end: `demo` on a tiny run, `search` (gated and random),
//! `finetune`, a killed-and-resumed search, and their input errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{bin, json, ok, run, s, scratch};
use depthshrink_nn::checkpoint;
use serde_json::Value;

/// A tiny run: a width-0.25 net (ImageNet layout) on 256 synthetic images in batches of 32.
const TINY: &str = r#"
epochs = 1
seed = 3
checkpoint_every = 2
[model]
width = 0.25
dropout = 0.0
[data]
batch_size = 32
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
[search]
log_every = 2
"#;

fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// Trains the tiny network for one epoch; returns (config path, weights path).
fn pretrained(dir: &Path) -> (String, PathBuf) {
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let out = dir.join("pretrain");
    ok(&[
        "--threads",
        "2",
        "train",
        "--config",
        s(&config),
        "--out",
        s(&out),
    ]);
    (s(&config).to_string(), out.join("last.safetensors"))
}

#[test]
fn demo_runs_every_stage_and_the_merged_network_keeps_the_accuracy() {
    let dir = scratch("demo");
    let config = dir.join("tiny.toml");
    std::fs::write(&config, TINY).unwrap();
    let out = dir.join("demo");
    let args = [
        "--threads",
        "2",
        "demo",
        "--config",
        s(&config),
        "--out",
        s(&out),
        "--search-epochs",
        "1",
        "--finetune-epochs",
        "1",
        "--bench-batch",
        "4",
        "--keep-ratio",
        "0.5",
    ];
    let stdout = ok(&args);
    assert!(stdout.contains("== summary"), "{stdout}");
    let summary = json(&out.join("summary.json"));
    // keep ratio 0.5 of 19 indices: 9 kept.
    assert_eq!(summary["kept"], 9);
    assert_eq!(summary["activations"], 19);
    assert!(summary["max_rel_error"].as_f64().unwrap() <= 1e-4);
    // Merging does not change the function: the same test images are classified the same,
    // up to an argmax flipping on a near-tie.
    let (finetuned, merged) = (
        summary["finetuned_top1"].as_f64().unwrap(),
        summary["merged_top1"].as_f64().unwrap(),
    );
    assert!((finetuned - merged).abs() <= 1.0 / 64.0 + 1e-9, "{summary}");
    for stage in ["pretrain", "search", "finetune"] {
        assert!(out.join(stage).join("last.safetensors").exists(), "{stage}");
    }
    // Throughput of the original, unmerged and merged networks at batch 1 and the bench batch,
    // the speed-up taken over the original.
    let throughput = summary["throughput"].as_array().unwrap();
    assert_eq!(throughput.len(), 2);
    for (t, batch) in throughput.iter().zip([1, 4]) {
        assert_eq!(t["batch"], batch);
        let f = |key: &str| t[key].as_f64().unwrap_or_else(|| panic!("{key}: {t}"));
        let speedup = f("merged") / f("original");
        assert!(
            (f("speedup_vs_original") - speedup).abs() <= 1e-9 * speedup,
            "{t}"
        );
    }
    // The search logged its gates every 2 steps (8 steps: 4 records) beside the epoch line.
    let metrics = std::fs::read_to_string(out.join("search/metrics.jsonl")).unwrap();
    let steps: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("step").is_some())
        .collect();
    assert_eq!(steps.len(), 4, "{metrics}");
    assert_eq!(steps[0]["gates"].as_array().unwrap().len(), 19);
    // The figure: both stages' curves, the gate scores and the latency table.
    let svg = std::fs::read_to_string(out.join("plot.svg")).unwrap();
    for text in [
        "search",
        "finetune",
        "pretrained",
        "gate scores of search",
        "latency table",
    ] {
        assert!(svg.contains(text), "{text} missing from plot.svg");
    }
    // The merged file is self-describing: `eval` needs no architecture flags.
    ok(&["eval", "--weights", s(&out.join("merged.safetensors"))]);
    // Running the demo again reuses every finished stage.
    let again = ok(&args);
    assert!(again.contains("nothing to do"), "{again}");
}

/// `search.only_if_merge_pays` without --latency: the search times the blocks itself, removes
/// only activations whose block's merge that table says saves time, and --resume reuses it.
#[test]
fn a_search_that_removes_only_paying_merges_measures_its_own_table() {
    let dir = scratch("search-paying");
    let (config, weights) = pretrained(&dir);
    let search = dir.join("search");
    let args = [
        "--threads",
        "2",
        "search",
        "--config",
        &config,
        "--pretrained",
        s(&weights),
        "--set",
        "search.only_if_merge_pays=true",
        "--out",
        s(&search),
    ];
    let stdout = ok(&args);
    assert!(
        stdout.contains("timing the blocks on this machine"),
        "{stdout}"
    );
    let table = json(&search.join("latency.json"));
    let mut savings = vec![0.0; 19];
    for b in table["blocks"].as_array().unwrap() {
        let f = |key: &str| b[key].as_f64().unwrap();
        savings[b["index"].as_u64().unwrap() as usize] = f("unmerged_ms") - f("merged_ms");
    }
    let out = json(&search.join("search.json"));
    // The indices that cannot be removed (stem, head, blocks whose merge does not pay) are in
    // every keep list, the shortest included.
    let fixed = savings.iter().filter(|&&dl| dl <= 0.0).count();
    assert!(fixed >= 2, "{savings:?}");
    assert_eq!(out["keep_lists"][0]["kept"], fixed as u64, "{out}");
    for (i, k) in out["keep"].as_array().unwrap().iter().enumerate() {
        assert!(
            k.as_u64() == Some(1) || savings[i] > 0.0,
            "index {i} removed, but its merge saves {} ms",
            savings[i]
        );
    }
    let resumed = ok(&[&args[..], &["--resume"]].concat());
    assert!(
        resumed.contains("reading the search's own latency table"),
        "{resumed}"
    );
    // The random baseline has no table to measure from: the error says what to give it.
    fails_with(
        &[
            "search",
            "--config",
            &config,
            "--random",
            "--set",
            "search.only_if_merge_pays=true",
            "--out",
            s(&dir.join("random")),
        ],
        "--latency",
    );
}

#[test]
fn search_writes_keep_lists_and_finetune_uses_them() {
    let dir = scratch("search");
    let (config, weights) = pretrained(&dir);
    let search = dir.join("search");
    let stdout = ok(&[
        "--threads",
        "2",
        "search",
        "--config",
        &config,
        "--pretrained",
        s(&weights),
        "--keep-ratio",
        "0.4",
        "--out",
        s(&search),
    ]);
    assert!(stdout.contains("keep 7 of 19"), "{stdout}");
    let out = json(&search.join("search.json"));
    assert_eq!(out["method"], "gates");
    assert_eq!(out["gates"].as_array().unwrap().len(), 19);
    let keep = out["keep"].as_array().unwrap();
    assert_eq!(keep.iter().filter(|k| k.as_u64() == Some(1)).count(), 7);
    // One keep list per count, nested: each adds one index to the previous.
    let lists = out["keep_lists"].as_array().unwrap();
    assert_eq!(lists.len(), 20);
    for (k, list) in lists.iter().enumerate() {
        assert_eq!(list["kept"], k);
    }

    let ft = dir.join("finetune");
    let keep_file = search.join("search.json");
    ok(&[
        "--threads",
        "2",
        "finetune",
        "--config",
        &config,
        "--pretrained",
        s(&weights),
        "--keep",
        s(&keep_file),
        "--distill",
        "--out",
        s(&ft),
    ]);
    let meta = checkpoint::load(ft.join("last.safetensors"))
        .unwrap()
        .metadata;
    let kept: Vec<u64> = meta["variant"]["keep"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| u64::from(v.as_bool().unwrap()))
        .collect();
    let want: Vec<u64> = keep.iter().map(|k| k.as_u64().unwrap()).collect();
    assert_eq!(kept, want);
    assert_eq!(meta["config"]["distill"]["alpha"], 0.7);

    // The random baseline keeps as many, needs no training and is reproducible.
    let random = dir.join("random");
    let stdout = ok(&[
        "search",
        "--config",
        &config,
        "--random",
        "--keep-ratio",
        "0.4",
        "--out",
        s(&random),
    ]);
    assert!(stdout.contains("keep 7 of 19 (random)"), "{stdout}");
    assert_eq!(json(&random.join("search.json"))["method"], "random");
}

#[test]
fn a_killed_and_resumed_search_ends_with_the_same_gates() {
    let dir = scratch("resume");
    let (config, weights) = pretrained(&dir);
    let args = |out: &Path| -> Vec<String> {
        [
            "--threads",
            "2",
            "search",
            "--config",
            &config,
            "--pretrained",
            s(&weights),
            "--set",
            "epochs=2",
            "--out",
            s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let (full, killed) = (dir.join("full"), dir.join("killed"));
    let a = args(&full);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let mut child = bin()
        .args(args(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let last = killed.join("last.safetensors");
    let start = Instant::now();
    while !last.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "no checkpoint");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success(), "finished before the kill");
    let mut resume = args(&killed);
    resume.push("--resume".into());
    ok(&resume.iter().map(String::as_str).collect::<Vec<_>>());

    let (a, b) = (
        json(&full.join("search.json")),
        json(&killed.join("search.json")),
    );
    assert_eq!(a["gates"], b["gates"]);
    // The per-step gate records are the same lines too (none lost or doubled).
    let steps = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"step\""))
            .map(String::from)
            .collect()
    };
    assert_eq!(steps(&full), steps(&killed));
}

#[test]
fn bench_compare_times_original_unmerged_and_merged_in_one_process() {
    let stdout = ok(&[
        "bench",
        "infer",
        "--compare",
        "--cifar",
        "--width",
        "0.25",
        "--keep",
        "0,0,0,0,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1",
        "--batch",
        "2",
        "--runs",
        "1",
        "--json",
    ]);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["merged_blocks"], 10);
    let f = |key: &str| v[key].as_f64().unwrap_or_else(|| panic!("{key}: {v}"));
    for key in [
        "original_images_per_s",
        "unmerged_images_per_s",
        "merged_images_per_s",
    ] {
        assert!(f(key) > 0.0, "{key}: {v}");
    }
    // Both speed-ups are the merged network's rate over the other one's.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b;
    let merged = f("merged_images_per_s");
    assert!(
        close(
            f("speedup_vs_original"),
            merged / f("original_images_per_s")
        ),
        "{v}"
    );
    assert!(
        close(
            f("speedup_vs_unmerged"),
            merged / f("unmerged_images_per_s")
        ),
        "{v}"
    );
}

#[test]
fn stage_inputs_are_checked() {
    let dir = scratch("errors");
    let (config, weights) = pretrained(&dir);
    let w = s(&weights);
    fails_with(&["search", "--config", &config], "--pretrained");
    fails_with(
        &[
            "bench",
            "infer",
            "--compare",
            "--cifar",
            "--width",
            "0.25",
            "--runs",
            "1",
        ],
        "no block to merge",
    );
    fails_with(
        &[
            "search",
            "--config",
            &config,
            "--pretrained",
            w,
            "--keep-ratio",
            "0",
        ],
        "keep_ratio",
    );
    let bogus = dir.join("bogus.json");
    std::fs::write(&bogus, "{}").unwrap();
    fails_with(
        &[
            "search",
            "--config",
            &config,
            "--pretrained",
            w,
            "--latency",
            s(&bogus),
        ],
        "not a latency table",
    );
    fails_with(
        &[
            "finetune",
            "--config",
            &config,
            "--pretrained",
            w,
            "--keep",
            "1,0,1",
        ],
        "19 activation indices",
    );
    fails_with(
        &[
            "finetune",
            "--config",
            &config,
            "--pretrained",
            w,
            "--keep",
            "1,0",
            "--alpha",
            "2",
        ],
        "distill.alpha",
    );
    fails_with(
        &[
            "finetune",
            "--config",
            &config,
            "--pretrained",
            s(&bogus),
            "--keep",
            "1",
        ],
        "bogus.json",
    );
}

/// A finetuned checkpoint carries its keep list: `merge`, `eval` and `infer` use it without
/// `--keep`, accept the same list, and refuse another one naming both (it would silently run
/// another function). A config's `[distill]` table alone does not turn distillation on.
#[test]
fn a_finetuned_checkpoint_carries_its_keep_list() {
    let dir = scratch("stored-keep");
    let (_, weights) = pretrained(&dir);
    // The same config with a [distill] table: finetuning without --distill must not distil.
    let with_distill = dir.join("distill.toml");
    std::fs::write(&with_distill, format!("{TINY}\n[distill]\nalpha = 0.5\n")).unwrap();
    let keep = "0,0,0,0,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1";
    let other = "0,0,0,0,1,1,0,0,0,0,0,0,0,1,1,1,1,1,1";
    let ft = dir.join("ft");
    let stdout = ok(&[
        "--threads",
        "2",
        "finetune",
        "--config",
        s(&with_distill),
        "--pretrained",
        s(&weights),
        "--keep",
        keep,
        "--out",
        s(&ft),
    ]);
    assert!(!stdout.contains("distilled"), "{stdout}");
    let finetuned = ft.join("last.safetensors");
    let meta = checkpoint::load(&finetuned).unwrap().metadata;
    assert!(
        meta["config"].get("distill").is_none(),
        "{}",
        meta["config"]
    );
    let f = s(&finetuned);

    let merged = dir.join("merged.safetensors");
    let stdout = ok(&["merge", "--weights", f, "--out", s(&merged)]);
    assert!(stdout.contains("merged 10 of 17 blocks"), "{stdout}");
    ok(&["merge", "--weights", f, "--keep", keep, "--out", s(&merged)]);
    fails_with(
        &[
            "merge",
            "--weights",
            f,
            "--keep",
            other,
            "--out",
            s(&merged),
        ],
        &format!("--keep {other} differs from the keep list {keep} stored in"),
    );
    fails_with(
        &["merge", "--weights", s(&weights), "--out", s(&merged)],
        "keeps every activation",
    );
    let plain = ok(&["eval", "--weights", f, "--json"]);
    assert_eq!(
        ok(&["eval", "--weights", f, "--keep", keep, "--json"]),
        plain
    );
    fails_with(
        &["eval", "--weights", f, "--keep", other],
        "differs from the keep list",
    );
    fails_with(
        &["eval", "--weights", s(&merged), "--keep", other],
        "differs from the keep list",
    );
    fails_with(
        &[
            "infer",
            "--weights",
            f,
            "--keep",
            other,
            "--input",
            s(&dir.join("x.safetensors")),
            "--output",
            s(&dir.join("y.safetensors")),
        ],
        "differs from the keep list",
    );
    // A network that keeps everything still takes a --keep (the activations to remove).
    let removed = ok(&["eval", "--weights", s(&weights), "--keep", keep, "--json"]);
    assert_ne!(removed, ok(&["eval", "--weights", s(&weights), "--json"]));
}

/// A latency table measured for another architecture or input size is refused by name.
#[test]
fn search_refuses_a_latency_table_of_another_network() {
    let dir = scratch("tables");
    let (config, weights) = pretrained(&dir);
    let table = |name: &str, extra: &[&str]| -> String {
        let path = dir.join(name);
        let mut args = vec!["latency", "--runs", "1", "--num-classes", "10"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", s(&path)]);
        ok(&args);
        s(&path).to_string()
    };
    let search = |table: &str| {
        vec![
            "search".to_string(),
            "--config".into(),
            config.clone(),
            "--pretrained".into(),
            s(&weights).into(),
            "--latency".into(),
            table.into(),
            "--out".into(),
            s(&dir.join("search")).into(),
        ]
    };
    let wider = table("w05.json", &["--width", "0.5", "--res", "32"]);
    let args = search(&wider);
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "was measured for MobileNetV2 w0.5, ImageNet layout, 10 classes, the network is MobileNetV2 w0.25",
    );
    let smaller = table("r16.json", &["--width", "0.25", "--res", "16"]);
    let args = search(&smaller);
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "measured at 16×16 input, the network runs at 32×32",
    );
    let cifar = table("cifar.json", &["--width", "0.25", "--cifar"]);
    let args = search(&cifar);
    fails_with(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "CIFAR layout",
    );
}

/// `prune --channels R` writes a network whose architecture records the ratio; it evaluates,
/// finetunes like any network and refuses ratios outside (0, 1].
#[test]
fn a_channel_pruned_network_evaluates_and_finetunes() {
    let dir = scratch("prune");
    let (config, weights) = pretrained(&dir);
    let pruned = dir.join("pruned.safetensors");
    let stdout = ok(&[
        "prune",
        "--weights",
        s(&weights),
        "--channels",
        "0.5",
        "--out",
        s(&pruned),
    ]);
    assert!(stdout.contains("hidden channels ×0.5"), "{stdout}");
    let meta = checkpoint::load(&pruned).unwrap().metadata;
    assert_eq!(meta["arch"]["hidden_ratio"], 0.5);
    let eval: Value =
        serde_json::from_str(&ok(&["eval", "--weights", s(&pruned), "--json"])).unwrap();
    assert!(eval["top1"].as_f64().is_some(), "{eval}");
    let all = vec!["1"; 19].join(",");
    ok(&[
        "--threads",
        "2",
        "finetune",
        "--config",
        &config,
        "--pretrained",
        s(&pruned),
        "--keep",
        &all,
        "--set",
        "model.hidden_ratio=0.5",
        "--out",
        s(&dir.join("ft")),
    ]);
    fails_with(
        &[
            "prune",
            "--weights",
            s(&weights),
            "--channels",
            "1.5",
            "--out",
            s(&pruned),
        ],
        "--channels must be in (0, 1]",
    );
    fails_with(
        &[
            "prune",
            "--weights",
            s(&pruned),
            "--channels",
            "0.5",
            "--out",
            s(&dir.join("twice.safetensors")),
        ],
        "already channel-pruned",
    );
}
