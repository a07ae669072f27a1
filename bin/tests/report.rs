//! `depthshrink report`: the HTML page and the Markdown table render from a small synthetic
//! study folder; a folder without runs is refused by name.

mod common;

use std::path::Path;

use common::{ok, run, s, scratch, stderr};

fn epoch_line(epoch: usize, val_acc: f64) -> String {
    format!(
        r#"{{"epoch":{epoch},"train_loss":1.5,"train_acc":0.4,"val_loss":1.2,"val_acc":{val_acc},"val_top5":0.9,"lr":0.1,"seconds":3.0,"eval_seconds":0.5,"images_per_s":100.0,"images":300}}"#
    )
}

/// A run directory with a summary and two epochs of metrics.
fn network(dir: &Path, name: &str, method: &str, top1: f64, group: Option<&str>) {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let group = group.map_or(String::new(), |g| format!(r#","group":"{g}""#));
    std::fs::write(
        run.join("summary.json"),
        format!(
            r#"{{"name":"{name}","method":"{method}","top1":{top1},"seed":0,"epochs":2,"command":"depthshrink finetune --keep a|b","params":1234567,"macs_m":12.5{group}}}"#
        ),
    )
    .unwrap();
    let lines = [epoch_line(1, top1 / 200.0), epoch_line(2, top1 / 100.0)];
    std::fs::write(run.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_study_folder_renders_as_one_self_contained_page_and_a_markdown_table() {
    let dir = scratch("report");
    let study = dir.join("study");
    network(&study, "baseline", "baseline", 88.6, None);
    network(&study, "ds-seed0", "depthshrinker", 87.9, Some("ds-keep10"));
    network(&study, "ds-seed1", "depthshrinker", 87.5, Some("ds-keep10"));
    network(&study, "w0.35", "width", 86.0, None);
    let gate = |step: usize| {
        format!(r#"{{"step":{step},"epoch":1,"gates":[0.1,0.5,-0.2],"keep":[1,0,1]}}"#)
    };
    std::fs::write(
        study.join("ds-seed0/search-metrics.jsonl"),
        [gate(2), gate(4)].join("\n") + "\n",
    )
    .unwrap();
    std::fs::write(
        study.join("latency.json"),
        r#"{"res":32,"threads":2,"runs":3,"batches":[1,64],"networks":[
            {"name":"baseline","ms":[2.0,40.0]},{"name":"ds-seed0","ms":[1.5,28.0]},
            {"name":"ds-seed1","ms":[1.6,29.0]},{"name":"w0.35","ms":[1.4,25.0]}]}"#,
    )
    .unwrap();
    ok(&[
        "latency",
        "--cifar",
        "--width",
        "0.25",
        "--num-classes",
        "10",
        "--runs",
        "1",
        "--out",
        s(&study.join("blocks.json")),
    ]);

    // `latency --study` times the networks that record an architecture, interleaved.
    let timed = dir.join("timed");
    network(&timed, "a", "baseline", 80.0, None);
    let summary = timed.join("a/summary.json");
    let text = std::fs::read_to_string(&summary).unwrap().replace(
        r#""seed":0"#,
        r#""seed":0,"arch":{"family":"mobilenet_v2","width":0.25,"num_classes":10,"cifar":true}"#,
    );
    std::fs::write(&summary, text).unwrap();
    let stdout = ok(&[
        "latency",
        "--study",
        s(&timed),
        "--runs",
        "1",
        "--res",
        "16",
    ]);
    assert!(stdout.contains("wrote"), "{stdout}");
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(timed.join("latency.json")).unwrap())
            .unwrap();
    assert_eq!(table["batches"], serde_json::json!([1, 64]));
    assert_eq!(table["networks"][0]["name"], "a");

    let page = dir.join("report.html");
    let stdout = ok(&["report", s(&study), "--out", s(&page)]);
    assert!(stdout.contains("4 networks"), "{stdout}");
    let html = std::fs::read_to_string(&page).unwrap();
    for needle in [
        "top-1 against latency, batch 1",
        "top-1 against latency, batch 64",
        "peak activation memory per block",
        "gate scores of ds-seed0",
        "width scaling",
        "<td class=\"l\">w0.35</td>",
        "depthshrink finetune --keep a|b",
    ] {
        assert!(html.contains(needle), "`{needle}` missing from the page");
    }
    // Pareto ×2, latency and memory per block, one gate chart, three training-curve figures.
    assert_eq!(html.matches("<svg").count(), 8);
    // Self-contained: nothing fetched from elsewhere.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));

    let md = ok(&["report", s(&study), "--markdown"]);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 2 + 4, "{md}");
    assert!(lines[0].starts_with("| network | method |"), "{md}");
    assert!(md.contains("| ds-seed1 | DepthShrinker |"), "{md}");
    assert!(md.contains("| 1.60 | 29.00 | 87.50 |"), "{md}");
    assert!(md.contains("`depthshrink finetune --keep a\\|b`"), "{md}");

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(&["report", s(&empty)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no run directory with a summary.json"),
        "{}",
        stderr(&out)
    );
}

/// A tiny run on the synthetic set: width-0.25 CIFAR layout, 64 images, 1 epoch.
const TINY: &str = r#"
epochs = 1
seed = 1
[model]
width = 0.25
cifar = true
dropout = 0.0
[data]
batch_size = 32
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
[search]
log_every = 1
"#;

/// `study` runs every method a plan can hold, resumably (a second run reuses the records);
/// `latency --study` times them all; `report` draws them.
#[test]
fn a_study_plan_runs_every_network_then_times_and_reports_them() {
    let dir = scratch("study");
    let config = common::write_config(&dir, TINY);
    let base = dir.join("base");
    ok(&[
        "--threads",
        "2",
        "train",
        "--config",
        &config,
        "--out",
        s(&base),
    ]);
    let (out, work) = (dir.join("results"), dir.join("work"));
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"config = "{config}"
pretrained = "{}"
out = "{}"
work = "{}"
search_epochs = 1
finetune_epochs = 1
stage_lr = 0.01
latency_batch = 1
distill = {{ alpha = 0.7, temperature = 4.0 }}
[[network]]
name = "baseline"
method = "baseline"
command = "depthshrink train --config tiny.toml"
[[network]]
name = "ds-keep9"
method = "depthshrinker"
keep = 9
group = "ds"
set = {{ "search.gate_gradient" = "clipped" }}
[[network]]
name = "random-keep9"
method = "random"
keep = 9
seed = 2
[[network]]
name = "w0.2"
method = "width"
width = 0.2
[[network]]
name = "channels-0.5"
method = "channel_pruning"
channels = 0.5
[[network]]
name = "blocks-3"
method = "block_pruning"
blocks = [3]
[[network]]
name = "no-distill"
method = "ablation"
ablation = "no_distill"
keep_from = "ds-keep9"
[[network]]
name = "scratch"
method = "ablation"
ablation = "from_scratch"
keep_from = "ds-keep9"
[[network]]
name = "no-free-relu6"
method = "ablation"
ablation = "no_free_relu6"
keep_from = "ds-keep9"
"#,
            s(&base.join("last.safetensors")),
            s(&out),
            s(&work)
        ),
    )
    .unwrap();
    let stdout = ok(&["--threads", "2", "study", s(&plan)]);
    assert!(stdout.contains("9 networks in"), "{stdout}");
    for name in [
        "baseline",
        "ds-keep9",
        "random-keep9",
        "w0.2",
        "channels-0.5",
        "blocks-3",
        "no-distill",
        "scratch",
        "no-free-relu6",
    ] {
        let record = common::json(&out.join(name).join("summary.json"));
        assert_eq!(record["name"], name);
        assert!(record["top1"].as_f64().is_some(), "{record}");
        assert!(record["arch"].is_object(), "{record}");
    }
    let ds = common::json(&out.join("ds-keep9/summary.json"));
    assert_eq!(
        ds["keep"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k == &&serde_json::json!(1))
            .count(),
        9
    );
    assert!(out.join("ds-keep9/search-metrics.jsonl").is_file());
    // The network's own override reached its search's config.
    let searched = std::fs::read_to_string(work.join("ds-keep9/search/config.toml")).unwrap();
    assert!(
        searched.contains("gate_gradient = \"clipped\""),
        "{searched}"
    );
    assert!(out.join("random-keep9/search.json").is_file());
    assert_eq!(
        common::json(&out.join("baseline/summary.json"))["command"],
        "depthshrink train --config tiny.toml"
    );
    // Finished networks are reused, not rerun.
    let again = ok(&["study", s(&plan), "--only", "ds-keep9"]);
    assert!(!again.contains("finetuning"), "{again}");
    let err = run(&["study", s(&plan), "--only", "nope"]);
    assert!(
        stderr(&err).contains("--only nope: no such network"),
        "{}",
        stderr(&err)
    );

    // The ablations use the DepthShrinker network's keep list.
    for name in ["no-distill", "scratch", "no-free-relu6"] {
        assert_eq!(
            common::json(&out.join(name).join("summary.json"))["keep"],
            ds["keep"]
        );
    }
    assert_eq!(
        common::json(&out.join("no-free-relu6/summary.json"))["free_relu6"],
        false
    );
    assert!(ds.get("free_relu6").is_none());
    let pruned = common::json(&out.join("blocks-3/summary.json"));
    assert_eq!(pruned["arch"]["dropped_blocks"], serde_json::json!([2]));
    let pruned = common::json(&out.join("channels-0.5/summary.json"));
    assert_eq!(pruned["arch"]["hidden_ratio"], 0.5);

    ok(&["latency", "--study", s(&out), "--runs", "1"]);
    let stdout = ok(&["report", s(&out)]);
    assert!(stdout.contains("9 networks"), "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("random removal") && html.contains("gate scores of ds-keep9"));
}
