//! The `depthshrink` binary end to end: real processes, real files, exit codes and messages.

mod common;

use std::path::{Path, PathBuf};

use common::{run, scratch, stderr};
use depthshrink_nn::checkpoint;
use depthshrink_tensor::Tensor;
use serde_json::Value;

fn fixture(name: &str) -> checkpoint::Checkpoint {
    checkpoint::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The torchvision weights of the forward fixture as a plain state_dict file (no metadata),
/// plus an input file; returns (weights, input, expected logits).
fn torchvision_files(dir: &Path) -> (PathBuf, PathBuf, Tensor) {
    let f = fixture("mbv2_forward.safetensors");
    let weights: Vec<(String, Tensor)> = f
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("features.") || k.starts_with("classifier."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (w, x) = (dir.join("tv.safetensors"), dir.join("x.safetensors"));
    checkpoint::save(&w, &weights, &Value::Null).unwrap();
    checkpoint::save(
        &x,
        &[("input".into(), f.tensors["input"].clone())],
        &Value::Null,
    )
    .unwrap();
    (w, x, f.tensors["logits"].clone())
}

#[test]
fn infer_on_a_torchvision_export_reproduces_pytorch_logits() {
    let dir = scratch("infer");
    let (w, x, want) = torchvision_files(&dir);
    let y = dir.join("y.safetensors");
    let out = run(&[
        "infer",
        "--weights",
        w.to_str().unwrap(),
        "--width",
        "0.5",
        "--num-classes",
        "10",
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = checkpoint::load(&y).unwrap().tensors["logits"].clone();
    assert_eq!(got.shape(), want.shape());
    let scale = want.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(err < 1e-4, "relative error {err}");
}

/// Runs the binary, expecting a failure whose message contains `needle` (and no panic).
#[track_caller]
/// A state dict in timm's names (`efficientnet_lite0`, 10 classes: the names and shapes the
/// golden fixture records) loads with no architecture flags, as EfficientNet-Lite0.
#[test]
fn a_timm_efficientnet_lite0_file_loads_without_flags() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lite0_timm.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let shapes: Vec<(String, Vec<usize>)> =
        serde_json::from_str(header["__metadata__"]["timm_state"].as_str().unwrap()).unwrap();
    let tensors: Vec<(String, Tensor)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let fill = if name.ends_with("running_var") {
                1.0
            } else {
                0.01
            };
            (name, Tensor::from_vec(&shape, vec![fill; n]).unwrap())
        })
        .collect();
    assert!(
        tensors
            .iter()
            .any(|(n, _)| n == "blocks.6.0.conv_pwl.weight")
    );
    let dir = scratch("timm");
    let (w, onnx) = (dir.join("lite0.safetensors"), dir.join("lite0.onnx"));
    checkpoint::save(&w, &tensors, &Value::Null).unwrap();
    let out = run(&[
        "export",
        "--weights",
        w.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("EfficientNet-Lite0"), "{stdout}");
    assert!(stdout.contains("of 16 blocks"), "{stdout}");
    // Flags that contradict what the names say are refused, not ignored.
    let w = w.to_str().unwrap();
    fails_with(
        &[
            "export",
            "--weights",
            w,
            "--out",
            onnx.to_str().unwrap(),
            "--width",
            "0.75",
        ],
        "--width 0.75 contradicts",
    );
}

fn fails_with(args: &[&str], needle: &str) {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = stderr(&out);
    assert!(
        err.contains(needle) && !err.contains("panicked"),
        "{args:?}: {err}"
    );
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_problem() {
    let dir = scratch("bad");
    let (w, x, _) = torchvision_files(&dir);
    let y = dir.join("y.safetensors");
    let (w, x, y) = (
        w.to_str().unwrap(),
        x.to_str().unwrap(),
        y.to_str().unwrap(),
    );
    let infer = |weights: &str, input: &str, width: &str| {
        [
            "infer",
            "--weights",
            weights,
            "--width",
            width,
            "--num-classes",
            "10",
            "--input",
            input,
            "--output",
            y,
        ]
        .map(String::from)
    };
    let run = |args: [String; 11], needle: &str| {
        fails_with(&args.iter().map(String::as_str).collect::<Vec<_>>(), needle)
    };

    // A width that does not fit the weights: every mismatch named.
    run(infer(w, x, "1.0"), "shape mismatch: features.0.0.weight");
    // A truncated weights file.
    let bytes = std::fs::read(w).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    run(
        infer(truncated.to_str().unwrap(), x, "0.5"),
        "truncated.safetensors",
    );
    // An input file without an `input` tensor.
    run(infer(w, w, "0.5"), "no tensor named `input`");
    // A bad flag value is reported by name.
    fails_with(
        &[
            "infer",
            "--weights",
            w,
            "--width=-1",
            "--input",
            x,
            "--output",
            y,
        ],
        "--width",
    );
    // A run directory without metrics.
    fails_with(&["plot", dir.to_str().unwrap()], "metrics.jsonl");
    // An unknown flag: clap's message and usage.
    fails_with(&["infer", "--wieghts", w], "--wieghts");
}

/// A small CIFAR MobileNetV2 with non-trivial BN statistics, saved with its metadata.
fn random_network(path: &Path) {
    use depthshrink_nn::arch::ArchConfig;
    use depthshrink_nn::network::Network;
    use depthshrink_nn::{Entry, Module};
    let mut net = Network::new(&ArchConfig::mobilenet_v2(0.35, 10, true), 5);
    let mut i = 0u32;
    net.visit("", &mut |name, entry| {
        i += 1;
        let v = 0.75 + 0.5 * ((i as f32) * 0.618).fract();
        match entry {
            Entry::Buffer(b) => b
                .data_mut()
                .iter_mut()
                .for_each(|x| *x = if name.ends_with("mean") { v - 0.75 } else { v }),
            Entry::Param(p) if p.value.ndim() == 1 => {
                p.value.data_mut().iter_mut().for_each(|x| *x = v - 0.5)
            }
            Entry::Param(_) => {}
        }
    });
    let state = depthshrink_nn::module::state_dict(&mut net);
    checkpoint::save(path, &state, &net.metadata()).unwrap();
}

#[test]
fn merged_network_runs_from_its_file_and_matches_the_unmerged_one() {
    let dir = scratch("merge");
    let (w, m) = (dir.join("net.safetensors"), dir.join("merged.safetensors"));
    random_network(&w);
    let keep = "0,0,0,0,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1";
    let out = run(&[
        "merge",
        "--weights",
        w.to_str().unwrap(),
        "--keep",
        keep,
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("merged 10 of 17 blocks"), "{stdout}");

    let x = dir.join("x.safetensors");
    // Any 3-channel batch will do; odd spatial size to exercise borders.
    let input = Tensor::from_vec(
        &[2, 3, 29, 31],
        (0..2 * 3 * 29 * 31)
            .map(|i| ((i as f32) * 0.37).sin())
            .collect(),
    )
    .unwrap();
    checkpoint::save(&x, &[("input".into(), input)], &Value::Null).unwrap();
    let logits = |weights: &Path, extra: &[&str]| {
        let y = dir.join("y.safetensors");
        let mut args = vec![
            "infer",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        checkpoint::load(&y).unwrap().tensors["logits"].clone()
    };
    // The merged file needs no flags: its architecture and variant are in its metadata.
    let merged = logits(&m, &[]);
    let unmerged = logits(&w, &["--keep", keep]);
    let scale = unmerged.data().iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = merged
        .data()
        .iter()
        .zip(unmerged.data())
        .fold(0f32, |a, (p, q)| a.max((p - q).abs()))
        / scale;
    assert!(err < 1e-4, "merged vs unmerged: relative error {err}");
}

#[test]
fn flops_of_the_official_configs_match_the_paper_table() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let base = run(&["flops", "--width", "1.4"]);
    assert!(String::from_utf8_lossy(&base.stdout).contains("630.15 MFLOPs"));
    for (name, mflops) in [
        ("A", "519.44"),
        ("B", "502.47"),
        ("C", "492.57"),
        ("D", "484.25"),
        ("E", "474.36"),
        ("F", "415.98"),
    ] {
        let path = configs.join(format!("mbv2-140-{name}.toml"));
        let out = run(&["flops", "--config", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("{mflops} MFLOPs")),
            "config {name}: {stdout}"
        );
    }
}

#[test]
fn kernel_benchmark_prints_one_json_record_per_case() {
    let out = run(&[
        "bench", "kernels", "--only", "copy", "--runs", "1", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let r: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (r["op"].as_str(), r["n"].as_u64()),
        (Some("copy"), Some(32))
    );
    // A copy moves bytes and does no arithmetic: a bandwidth, no FLOP rate.
    assert!(r["gbps"].as_f64().unwrap() > 0.0 && r["ms"].as_f64().unwrap() > 0.0);
    assert!(r.get("gflops").is_none(), "{r}");
    fails_with(&["bench", "kernels", "--only", "gemm"], "--only \"gemm\"");
}

/// `export` writes the network a file holds, as it is (original), with activations removed
/// (`--keep`: pad-first) or merged; tract's tests (onnx/tests) check what the files compute.
#[test]
fn export_writes_every_kind_of_network_and_refuses_files_that_are_not_one() {
    use depthshrink_onnx::proto::ModelProto;
    use prost::Message;
    let dir = scratch("export");
    let (w, m) = (dir.join("net.safetensors"), dir.join("merged.safetensors"));
    random_network(&w);
    let (w, m) = (w.to_str().unwrap(), m.to_str().unwrap());
    let keep = "0,0,0,0,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1";
    let out = run(&["merge", "--weights", w, "--keep", keep, "--out", m]);
    assert!(out.status.success(), "{}", stderr(&out));
    let onnx = dir.join("net.onnx");
    let o = onnx.to_str().unwrap();
    // Exports, then returns stdout and the file's numbers of Pad and Conv nodes.
    let export = |args: &[&str]| {
        let args = [&["export", "--out", o], args].concat();
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let model = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
        let graph = model.graph.unwrap();
        let ops = |op: &str| graph.node.iter().filter(|n| n.op_type() == op).count();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (stdout, ops("Pad"), ops("Conv"))
    };
    let (stdout, pads, convs) = export(&["--weights", w]);
    assert!(
        stdout.contains("0 merged and 0 pad-first of 17 blocks"),
        "{stdout}"
    );
    assert!(stdout.contains("input N×3×32×32"), "{stdout}");
    assert_eq!((pads, convs), (0, 52));
    let (stdout, pads, _) = export(&["--weights", w, "--keep", keep, "--res", "29"]);
    assert!(stdout.contains("0 merged and 10 pad-first"), "{stdout}");
    assert!(stdout.contains("input N×3×29×29"), "{stdout}");
    assert_eq!(pads, 10);
    // `merge` leaves the DS block unmerged by default: 10 merged blocks, 3 convs → 1 each; and
    // `export --merged` merges the same ones.
    for args in [
        &["--weights", m][..],
        &["--weights", w, "--keep", keep, "--merged"],
    ] {
        let (stdout, pads, convs) = export(args);
        assert!(stdout.contains("10 merged and 0 pad-first"), "{stdout}");
        assert_eq!((pads, convs), (0, 52 - 10 * 2));
    }
    let random = ["--random-init", "--width", "0.35", "--cifar", "--res", "8"];
    let (stdout, ..) = export(&random);
    assert!(
        stdout.contains("MobileNetV2 w0.35, CIFAR layout"),
        "{stdout}"
    );

    // Files that are not a network: not safetensors at all, and tensors of something else.
    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "not a network\n").unwrap();
    fails_with(
        &["export", "--weights", text.to_str().unwrap(), "--out", o],
        &format!("{} is not a valid safetensors file", text.display()),
    );
    let x = dir.join("x.safetensors");
    let image = Tensor::from_vec(&[1, 3, 4, 4], vec![0.5; 48]).unwrap();
    checkpoint::save(&x, &[("input".into(), image)], &Value::Null).unwrap();
    fails_with(
        &["export", "--weights", x.to_str().unwrap(), "--out", o],
        &format!("checkpoint {} does not match the model", x.display()),
    );
    fails_with(
        &["export", "--weights", w, "--out", o, "--res", "0"],
        "--res must be at least 1",
    );
    fails_with(
        &["export", "--weights", w, "--out", o, "--merged"],
        "--merged: no block has its activations removed",
    );
    fails_with(
        &["export", "--weights", w, "--out", w],
        "is the same file as --weights",
    );
    fails_with(&["export", "--out", o], "--weights");
}
