//! Checkpoint round trips, PyTorch files, corrupt and truncated files, atomic writes.
use super::*;
use crate::arch::ArchConfig;
use crate::module::{Param, join};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::fs::File;

/// A scratch directory under the system temp dir, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "depthshrink-checkpoint-{}-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Sorted names of the directory's entries, temp files included.
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

enum Slot {
    Param(Param),
    Buffer(Tensor),
}

/// A module given by its flat state, standing in for the real networks.
struct Flat(Vec<(String, Slot)>);

impl Module for Flat {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, Entry<'_>)) {
        for (name, slot) in &mut self.0 {
            let name = join(prefix, name);
            match slot {
                Slot::Param(p) => f(&name, Entry::Param(p)),
                Slot::Buffer(b) => f(&name, Entry::Buffer(b)),
            }
        }
    }
}

impl Flat {
    /// BN running statistics become buffers, everything else parameters.
    fn from_state<'a>(state: impl IntoIterator<Item = (&'a String, &'a Tensor)>) -> Flat {
        Flat(
            state
                .into_iter()
                .map(|(name, t)| {
                    let slot = if name.ends_with(".running_mean") || name.ends_with(".running_var")
                    {
                        Slot::Buffer(t.clone())
                    } else {
                        Slot::Param(Param::new(t.clone(), true))
                    };
                    (name.clone(), slot)
                })
                .collect(),
        )
    }
}

fn random(rng: &mut ChaCha8Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()).unwrap()
}

/// Stem conv + BN, the first block's depthwise conv + BN, and the classifier, named as in
/// torchvision's `mobilenet_v2`.
fn tiny(seed: u64) -> Flat {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shapes: [(&str, &[usize]); 12] = [
        ("features.0.0.weight", &[4, 3, 3, 3]),
        ("features.0.1.weight", &[4]),
        ("features.0.1.bias", &[4]),
        ("features.0.1.running_mean", &[4]),
        ("features.0.1.running_var", &[4]),
        ("features.1.conv.0.0.weight", &[4, 1, 3, 3]),
        ("features.1.conv.0.1.weight", &[4]),
        ("features.1.conv.0.1.bias", &[4]),
        ("features.1.conv.0.1.running_mean", &[4]),
        ("features.1.conv.0.1.running_var", &[4]),
        ("classifier.1.weight", &[10, 4]),
        ("classifier.1.bias", &[10]),
    ];
    let mut state: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(name, shape)| (name.to_string(), random(&mut rng, shape)))
        .collect();
    // Variances are never negative (loading refuses them).
    for (name, t) in &mut state {
        if name.ends_with(".running_var") {
            t.data_mut().iter_mut().for_each(|v| *v = v.abs());
        }
    }
    Flat::from_state(state.iter().map(|(n, t)| (n, t)))
}

fn metadata() -> Value {
    json!({
        "arch": ArchConfig::mobilenet_v2(0.5, 10, true),
        "epoch": 7,
        "rng": [u64::MAX, 3],
        "config": {"lr": 0.05, "schedule": "cosine"},
    })
}

#[test]
fn round_trip_in_every_storage_dtype() {
    let dir = Scratch::new("round-trip");
    let state = state_dict(&mut tiny(1));
    let numel: usize = state.iter().map(|(_, t)| t.numel()).sum();
    for (dtype, narrow) in [
        (StorageDtype::F32, (|v| v) as fn(f32) -> f32),
        (StorageDtype::F16, |v| f16::from_f32(v).to_f32()),
        (StorageDtype::BF16, |v| bf16::from_f32(v).to_f32()),
    ] {
        let path = dir.file(&format!("{dtype:?}.safetensors"));
        save_as(&path, &state, &metadata(), dtype).unwrap();
        let ckpt = load(&path).unwrap();
        assert_eq!(ckpt.path, path);
        assert_eq!(ckpt.metadata, metadata());
        let arch: ArchConfig = serde_json::from_value(ckpt.metadata["arch"].clone()).unwrap();
        assert_eq!(arch, ArchConfig::mobilenet_v2(0.5, 10, true));
        assert_eq!(ckpt.tensors.len(), state.len());
        for (name, t) in &state {
            let got = &ckpt.tensors[name];
            assert_eq!(got.shape(), t.shape(), "{name}");
            let want: Vec<f32> = t.data().iter().map(|&v| narrow(v)).collect();
            assert_eq!(got.data(), want, "{name} stored as {dtype:?}");
        }
        let bytes = fs::read(&path).unwrap();
        let data_len = SafeTensors::read_metadata(&bytes).unwrap().1.data_len();
        let width = if dtype == StorageDtype::F32 { 4 } else { 2 };
        assert_eq!(data_len, numel * width, "{dtype:?}");
    }
}

/// The same checkpoint is the same bytes every time (the safetensors crate alone writes its
/// two metadata keys in a random order), and the sorted header still loads.
#[test]
fn saving_twice_gives_the_same_bytes() {
    let dir = Scratch::new("same-bytes");
    let state = state_dict(&mut tiny(2));
    let path = dir.file("a.safetensors");
    let mut files = (0..16).map(|_| {
        save(&path, &state, &metadata()).unwrap();
        fs::read(&path).unwrap()
    });
    let first = files.next().unwrap();
    assert!(files.all(|f| f == first));
    assert_eq!(load(&path).unwrap().metadata, metadata());
}

#[test]
fn null_metadata_round_trips() {
    let dir = Scratch::new("null-metadata");
    let path = dir.file("a.safetensors");
    save(&path, &[("x".into(), Tensor::scalar(1.5))], &Value::Null).unwrap();
    let ckpt = load(&path).unwrap();
    assert_eq!(ckpt.metadata, Value::Null);
    assert_eq!(ckpt.tensors["x"].shape(), &[] as &[usize]);
    assert_eq!(ckpt.tensors["x"].data(), &[1.5]);
}

#[test]
fn successful_saves_leave_only_the_final_file() {
    let dir = Scratch::new("atomic-ok");
    let path = dir.file("ckpt.safetensors");
    save(&path, &state_dict(&mut tiny(1)), &json!({"epoch": 1})).unwrap();
    save(&path, &state_dict(&mut tiny(2)), &json!({"epoch": 2})).unwrap();
    assert_eq!(dir.entries(), ["ckpt.safetensors"]);
    let ckpt = load(&path).unwrap();
    assert_eq!(ckpt.metadata, json!({"epoch": 2}));
    let want = state_dict(&mut tiny(2));
    assert_eq!(ckpt.tensors["classifier.1.bias"], want[11].1);
}

#[test]
fn failed_saves_leave_no_file_and_name_the_path() {
    let dir = Scratch::new("atomic-fail");
    let state = state_dict(&mut tiny(1));

    let missing = dir.file("no-such-dir").join("ckpt.safetensors");
    let err = save(&missing, &state, &Value::Null).unwrap_err();
    assert!(matches!(err, CheckpointError::Write { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!missing.exists());

    // A directory in the way is refused before any temp file is written.
    let occupied = dir.file("occupied");
    fs::create_dir(&occupied).unwrap();
    fs::write(occupied.join("keep"), b"x").unwrap();
    let err = save(&occupied, &state, &Value::Null).unwrap_err();
    assert!(
        err.to_string().contains(&occupied.display().to_string()),
        "{err}"
    );
    assert_eq!(dir.entries(), ["occupied"]);
    assert!(occupied.is_dir());
}

/// The rename would replace a symlink (or a FIFO, a device) with a regular file.
#[cfg(unix)]
#[test]
fn a_destination_that_is_not_a_regular_file_is_refused_and_kept() {
    let dir = Scratch::new("not-regular");
    let target = dir.file("target.safetensors");
    fs::write(&target, b"precious").unwrap();
    let link = dir.file("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = save(&link, &state_dict(&mut tiny(1)), &Value::Null).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&link.display().to_string()), "{msg}");
    assert!(msg.contains("a symbolic link, not a regular file"), "{msg}");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&target).unwrap(), b"precious");

    let fifo = dir.file("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let err = write_atomic(&fifo, b"x").unwrap_err();
        assert!(err.to_string().contains("special file"), "{err}");
        assert!(!fs::symlink_metadata(&fifo).unwrap().is_file());
    }
    let mut entries = dir.entries();
    entries.retain(|e| e != "fifo");
    assert_eq!(entries, ["link.safetensors", "target.safetensors"]);
}

#[test]
fn non_finite_weights_and_negative_variances_are_refused_by_name() {
    let dir = Scratch::new("bad-values");
    for (name, index, value, needle) in [
        (
            "features.0.0.weight",
            5,
            f32::NAN,
            "holds NaN at flat index 5 of 108",
        ),
        (
            "classifier.1.bias",
            2,
            f32::INFINITY,
            "holds inf at flat index 2",
        ),
        (
            "features.1.conv.0.1.running_var",
            1,
            -0.5,
            "negative running variance -0.5 at index 1",
        ),
    ] {
        let mut state = state_dict(&mut tiny(1));
        let slot = state.iter_mut().find(|(n, _)| n == name).unwrap();
        slot.1.data_mut()[index] = value;
        let path = dir.file("bad.safetensors");
        save(&path, &state, &Value::Null).unwrap();
        let mut model = tiny(2);
        let before = state_dict(&mut model);
        let err =
            load_into(&mut model, &load(&path).unwrap(), &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, CheckpointError::BadValue { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("`{name}`")), "{msg}");
        assert!(msg.contains(needle), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert_eq!(state_dict(&mut model), before);
    }
}

#[cfg(unix)]
#[test]
fn save_into_a_read_only_directory_fails_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("read-only");
    let locked = dir.file("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    // Root ignores directory permissions; then there is nothing to test.
    let writable = File::create(locked.join("probe")).is_ok();
    let path = locked.join("ckpt.safetensors");
    let result = save(&path, &state_dict(&mut tiny(1)), &Value::Null);
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    if writable {
        return;
    }
    let err = result.unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(fs::read_dir(&locked).unwrap().count(), 0);
}

#[test]
fn missing_truncated_and_random_files_are_rejected_by_name() {
    let dir = Scratch::new("corrupt");
    let good = dir.file("good.safetensors");
    save(&good, &state_dict(&mut tiny(1)), &metadata()).unwrap();
    let bytes = fs::read(&good).unwrap();

    let missing = dir.file("missing.safetensors");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, CheckpointError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let mut noise = vec![0u8; 256];
    ChaCha8Rng::seed_from_u64(9).fill(&mut noise[..]);
    for (name, contents) in [
        ("truncated-data", &bytes[..bytes.len() - 7]),
        ("truncated-header", &bytes[..40]),
        ("too-short", &bytes[..5]),
        ("empty", &[][..]),
        ("random", &noise[..]),
    ] {
        let path = dir.file(name);
        fs::write(&path, contents).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Format { .. }),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a valid safetensors file"), "{msg}");
    }
}

/// Writes a raw safetensors file with arbitrary dtypes and metadata.
fn write_raw(path: &Path, tensors: &[(&str, Dtype, &[usize], Vec<u8>)], meta: &[(&str, &str)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.to_vec(), bytes).unwrap();
            (name.to_string(), view)
        })
        .collect();
    let meta = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn bad_metadata_json_is_rejected() {
    let dir = Scratch::new("bad-json");
    let path = dir.file("a.safetensors");
    write_raw(&path, &[], &[(METADATA_KEY, "{\"epoch\": ")]);
    let err = load(&path).unwrap_err();
    assert!(matches!(err, CheckpointError::Metadata { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn integers_are_accepted_only_for_counters() {
    let dir = Scratch::new("integers");
    let path = dir.file("counters.safetensors");
    write_raw(
        &path,
        &[
            (
                "bn.num_batches_tracked",
                Dtype::I64,
                &[],
                12i64.to_le_bytes().to_vec(),
            ),
            (
                "bn2.num_batches_tracked",
                Dtype::I32,
                &[],
                5i32.to_le_bytes().to_vec(),
            ),
        ],
        &[],
    );
    let ckpt = load(&path).unwrap();
    assert_eq!(ckpt.tensors["bn.num_batches_tracked"].data(), &[12.0]);
    assert_eq!(ckpt.tensors["bn2.num_batches_tracked"].data(), &[5.0]);

    for (name, dtype, bytes) in [
        ("conv.weight", Dtype::I64, 1i64.to_le_bytes().to_vec()),
        ("steps", Dtype::I32, 1i32.to_le_bytes().to_vec()),
        (
            "bn.num_batches_tracked",
            Dtype::F64,
            1f64.to_le_bytes().to_vec(),
        ),
    ] {
        let path = dir.file("bad.safetensors");
        write_raw(&path, &[(name, dtype, &[], bytes)], &[]);
        let err = load(&path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::UnsupportedDtype { .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&format!("`{name}`")), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }
}

#[test]
fn load_into_reports_every_mismatch_and_changes_nothing() {
    let dir = Scratch::new("mismatch");
    let path = dir.file("a.safetensors");
    let mut state = state_dict(&mut tiny(1));
    state.retain(|(name, _)| name != "features.0.1.bias");
    state.push((
        "features.2.conv.0.0.weight".into(),
        Tensor::zeros(&[8, 4, 1, 1]),
    ));
    let classifier = state
        .iter_mut()
        .find(|(n, _)| n == "classifier.1.weight")
        .unwrap();
    classifier.1 = Tensor::zeros(&[5, 4]);
    save(&path, &state, &Value::Null).unwrap();

    let mut model = tiny(2);
    let before = state_dict(&mut model);
    let err = load_into(&mut model, &load(&path).unwrap(), &LoadOptions::default()).unwrap_err();
    let CheckpointError::Mismatch { problems, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        problems,
        &[
            Mismatch::Missing("features.0.1.bias".into()),
            Mismatch::Shape {
                name: "classifier.1.weight".into(),
                file: vec![5, 4],
                model: vec![10, 4],
            },
            Mismatch::Unexpected("features.2.conv.0.0.weight".into()),
        ]
    );
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint {} does not match the model, 3 problem(s):\n  \
             missing in file: features.0.1.bias\n  \
             shape mismatch: classifier.1.weight: file [5, 4], model [10, 4]\n  \
             unexpected in file: features.2.conv.0.0.weight",
            path.display()
        )
    );
    assert_eq!(state_dict(&mut model), before);
}

#[test]
fn load_into_copies_values_and_skips_allowed_extras() {
    let dir = Scratch::new("load-into");
    let path = dir.file("a.safetensors");
    let mut state = state_dict(&mut tiny(1));
    let optim: Vec<(String, Tensor)> = state
        .iter()
        .map(|(name, t)| (format!("optim.momentum.{name}"), t.clone()))
        .collect();
    let model_state = state.clone();
    state.extend(optim);
    save(&path, &state, &Value::Null).unwrap();
    let ckpt = load(&path).unwrap();

    let mut model = tiny(2);
    let err = load_into(&mut model, &ckpt, &LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("12 problem(s)"), "{err}");

    let opts = LoadOptions {
        extra_prefixes: vec!["optim.".into()],
        ..LoadOptions::default()
    };
    let report = load_into(&mut model, &ckpt, &opts).unwrap();
    assert_eq!(report.loaded, 12);
    assert_eq!(report.skipped.len(), 12);
    assert!(
        report
            .skipped
            .iter()
            .all(|n| n.starts_with("optim.momentum."))
    );
    assert_eq!(state_dict(&mut model), model_state);
}

#[test]
fn ignored_names_are_skipped_on_both_sides() {
    let opts = LoadOptions::default();
    assert!(opts.ignores("features.0.1.num_batches_tracked"));
    assert!(opts.ignores("num_batches_tracked"));
    assert!(!opts.ignores("features.0.1.xnum_batches_tracked"));

    // Ignoring a name the model has but the file lacks is not an error either.
    let mut state = state_dict(&mut tiny(1));
    state.retain(|(n, _)| !n.ends_with("running_var"));
    let ckpt = Checkpoint {
        path: "in-memory".into(),
        tensors: state.into_iter().collect(),
        metadata: Value::Null,
    };
    let opts = LoadOptions {
        ignore: vec!["running_var".into()],
        ..LoadOptions::default()
    };
    let report = load_into(&mut tiny(2), &ckpt, &opts).unwrap();
    assert_eq!(report.loaded, 10);
    assert!(report.skipped.is_empty());
}

#[test]
fn torchvision_export_adds_i64_counters_that_loading_ignores() {
    let dir = Scratch::new("export");
    let path = dir.file("tv.safetensors");
    let mut model = tiny(1);
    export_torchvision(&path, &mut model).unwrap();

    let bytes = fs::read(&path).unwrap();
    let raw = SafeTensors::deserialize(&bytes).unwrap();
    let mut counters: Vec<&str> = raw
        .iter()
        .filter(|(_, v)| v.dtype() == Dtype::I64)
        .map(|(name, v)| {
            assert!(v.shape().is_empty());
            assert_eq!(v.data(), &[0; 8]);
            name
        })
        .collect();
    counters.sort();
    assert_eq!(
        counters,
        [
            "features.0.1.num_batches_tracked",
            "features.1.conv.0.1.num_batches_tracked"
        ]
    );

    let ckpt = load(&path).unwrap();
    let mut other = tiny(2);
    let report = load_into(&mut other, &ckpt, &LoadOptions::default()).unwrap();
    assert_eq!(report.loaded, 12);
    assert_eq!(report.skipped, counters);
    assert_eq!(state_dict(&mut other), state_dict(&mut model));

    let strict = LoadOptions {
        ignore: Vec::new(),
        ..LoadOptions::default()
    };
    let err = load_into(&mut other, &ckpt, &strict).unwrap_err();
    assert!(
        err.to_string()
            .contains("unexpected in file: features.0.1.num_batches_tracked")
    );
}

#[test]
fn values_beyond_half_range_are_refused_and_the_old_file_survives() {
    let dir = Scratch::new("range");
    let path = dir.file("a.safetensors");
    save(&path, &[("w".into(), Tensor::scalar(1.0))], &Value::Null).unwrap();
    let big = [(
        "w".to_string(),
        Tensor::from_vec(&[2], vec![1.0, 1e6]).unwrap(),
    )];
    let err = save_as(&path, &big, &Value::Null, StorageDtype::F16).unwrap_err();
    assert!(matches!(err, CheckpointError::OutOfRange { .. }), "{err}");
    assert!(err.to_string().contains("`w`"), "{err}");
    assert_eq!(load(&path).unwrap().tensors["w"].data(), &[1.0]);
    save_as(&path, &big, &Value::Null, StorageDtype::BF16).unwrap();
}

#[test]
fn duplicate_names_are_refused() {
    let dir = Scratch::new("duplicates");
    let path = dir.file("a.safetensors");
    let t = Tensor::scalar(1.0);
    let err = save(
        &path,
        &[("w".into(), t.clone()), ("w".into(), t)],
        &Value::Null,
    )
    .unwrap_err();
    assert!(
        matches!(err, CheckpointError::DuplicateName { .. }),
        "{err}"
    );
    assert!(!path.exists());
}

/// The full torchvision round trip, against a real PyTorch install:
/// `DEPTHSHRINK_PYTHON=/path/to/python cargo test -p depthshrink-nn -- --ignored torchvision`
/// (the interpreter needs torch, torchvision and safetensors).
#[test]
#[ignore = "needs PyTorch; set DEPTHSHRINK_PYTHON"]
fn torchvision_mobilenet_v2_round_trip() {
    let python = std::env::var("DEPTHSHRINK_PYTHON")
        .expect("set DEPTHSHRINK_PYTHON to a python with torch, torchvision, safetensors");
    let run = |script: &str, args: &[&Path]| {
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = Scratch::new("torchvision");
    let theirs = dir.file("theirs.safetensors");
    let ours = dir.file("ours.safetensors");
    run(
        "import sys, torch, torchvision, safetensors.torch as st\n\
         torch.manual_seed(0)\n\
         m = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)\n\
         m.train(); m(torch.randn(2, 3, 32, 32))  # non-trivial running stats and counters\n\
         st.save_file(m.state_dict(), sys.argv[1])",
        &[&theirs],
    );

    let ckpt = load(&theirs).unwrap();
    let counters = ckpt.tensors.keys().filter(|n| is_counter(n)).count();
    assert_eq!((ckpt.tensors.len(), counters), (314, 52));
    assert!(ckpt.tensors["features.0.1.num_batches_tracked"].data() == [1.0]);
    let mut model = Flat::from_state(ckpt.tensors.iter().filter(|(n, _)| !is_counter(n)));
    let report = load_into(&mut model, &ckpt, &LoadOptions::default()).unwrap();
    assert_eq!((report.loaded, report.skipped.len()), (262, 52));

    // Shift every value so the check below sees our tensors, not torchvision's init.
    model.visit("", &mut |_, entry| {
        let t = match entry {
            Entry::Param(p) => &mut p.value,
            Entry::Buffer(b) => b,
        };
        t.data_mut().iter_mut().for_each(|v| *v += 1.0);
    });
    export_torchvision(&ours, &mut model).unwrap();
    run(
        "import sys, torch, torchvision, safetensors.torch as st\n\
         theirs, ours = st.load_file(sys.argv[1]), st.load_file(sys.argv[2])\n\
         m = torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)\n\
         m.load_state_dict(ours, strict=True)\n\
         for k, v in m.state_dict().items():\n\
         \x20   if k.endswith('num_batches_tracked'):\n\
         \x20       assert v.dtype == torch.int64 and v.item() == 0, k\n\
         \x20   else:\n\
         \x20       assert torch.equal(v, theirs[k] + 1), k",
        &[&theirs, &ours],
    );
}
