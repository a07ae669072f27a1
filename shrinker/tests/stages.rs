//! The three stages through the library API, in process: train a tiny network, search its
//! activations (with a latency table), finetune without the removed ones, merge and verify;
//! and the stages' refusals (a keep list of another length or run, a table of another network).

use std::path::PathBuf;

use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::checkpoint;
use depthshrink_nn::keep::KeepList;
use depthshrink_nn::network::Network;
use depthshrink_shrinker::StageError;
use depthshrink_shrinker::config::DistillConfig;
use depthshrink_shrinker::finetune::finetune;
use depthshrink_shrinker::latency::{LatencyTable, measure};
use depthshrink_shrinker::merge::{MERGE_TOLERANCE, blocks_to_merge, merge_and_verify};
use depthshrink_shrinker::search::{SEARCH_JSON, SearchOutput, random_search, search};
use depthshrink_shrinker::train::{LAST, Silent, TrainConfig, evaluate, train};

/// A width-0.25 network (ImageNet layout) on 128 synthetic images in batches of 32.
const TINY: &str = r#"
epochs = 1
seed = 5
[model]
width = 0.25
dropout = 0.0
[data]
batch_size = 32
limit_train = 128
limit_test = 64
cache = true
[optim]
optimizer = "sgd"
momentum = 0.9
weight_decay = 5e-4
[lr]
schedule = "cosine"
lr = 0.05
[search]
keep_ratio = 0.4
log_every = 2
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ds-lib-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config() -> TrainConfig {
    TrainConfig::from_toml(TINY, &[]).unwrap()
}

#[test]
fn the_three_stages_run_through_the_library() {
    let dir = scratch("stages");
    let pretrained = train(config(), &dir.join("pretrain"), false, &mut Silent).unwrap();
    assert!(dir.join("pretrain").join(LAST).is_file());
    let data = config().data.open(0).unwrap();
    let res = data.input_res().unwrap();
    let table = measure(&pretrained.arch, res, 1, 1, |_, _| {}).unwrap();

    // Stage 1: 7 of 19 kept at ratio 0.4; search.json holds what was returned.
    let found = search(
        config(),
        pretrained.clone(),
        Some(&table),
        &dir.join("search"),
        false,
        &mut Silent,
    )
    .unwrap();
    assert_eq!((found.keep.kept(), found.keep.len()), (7, 19));
    let written: SearchOutput = serde_json::from_str(
        &std::fs::read_to_string(dir.join("search").join(SEARCH_JSON)).unwrap(),
    )
    .unwrap();
    // (Floats only to serde_json's parsing precision.)
    assert_eq!(written.keep, found.keep);
    let lists = |o: &SearchOutput| {
        o.keep_lists
            .iter()
            .map(|l| l.keep.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(lists(&written), lists(&found));
    let random = random_search(&config(), Some(&table), &dir.join("random")).unwrap();
    assert_eq!(random.keep.kept(), 7);
    assert_eq!(random.method, "random");

    // Stage 2: the finetuned network carries the list, in memory and in its checkpoint.
    let mut ft_config = config();
    ft_config.distill = Some(DistillConfig::default());
    let finetuned = finetune(
        ft_config.clone(),
        (&pretrained).into(),
        &found.keep,
        &dir.join("finetune"),
        false,
        &mut Silent,
    )
    .unwrap();
    assert_eq!(finetuned.variant().keep, found.keep);
    let ckpt = checkpoint::load(dir.join("finetune").join(LAST)).unwrap();
    let reloaded = Network::from_checkpoint(&ckpt, None).unwrap();
    assert_eq!(reloaded.variant().keep, found.keep);
    assert!(ckpt.metadata["extra"]["pretrained"]["fingerprint"].is_string());

    // Resuming with another keep list is refused by the stage, naming both lists.
    let mut other = found.keep.to_vec();
    let flip = other.iter().position(|&k| !k).unwrap();
    other[flip] = true;
    let other = KeepList::new(other);
    let err = finetune(
        ft_config,
        (&pretrained).into(),
        &other,
        &dir.join("finetune"),
        true,
        &mut Silent,
    )
    .err()
    .expect("a resume with another keep list is refused");
    match err {
        StageError::Keep(m) => {
            assert!(m.contains(&other.to_string()), "{m}");
            assert!(m.contains(&found.keep.to_string()), "{m}");
        }
        e => panic!("expected a keep-list error, got {e}"),
    }

    // Stage 3: every removed IR block merges, the function is kept, the accuracy too.
    let plan = blocks_to_merge(&finetuned, false, None);
    let merged = merge_and_verify(&finetuned, plan, res).unwrap();
    assert!(merged.count() > 0);
    assert!(merged.deviation.max_rel <= MERGE_TOLERANCE);
    let before = evaluate(&finetuned, &data.test).unwrap();
    let after = evaluate(&merged.network, &data.test).unwrap();
    assert!(
        (before.top1 - after.top1).abs() <= 1.0 / 64.0,
        "{before:?} {after:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn stages_refuse_inputs_that_do_not_fit_the_network() {
    let dir = scratch("refusals");
    let net = Network::new(&config().model.arch(10), 0);
    // A keep list of another length.
    let err = finetune(
        config(),
        (&net).into(),
        &KeepList::new(vec![true, false, true]),
        &dir.join("ft"),
        false,
        &mut Silent,
    )
    .err()
    .expect("a keep list of 3 entries is refused");
    assert!(matches!(err, StageError::Keep(_)), "{err}");
    // A latency table of a wider network.
    let wider = measure(
        &ArchConfig::mobilenet_v2(0.5, 10, false),
        32,
        1,
        1,
        |_, _| {},
    )
    .unwrap();
    let err = search(
        config(),
        net,
        Some(&wider),
        &dir.join("s"),
        false,
        &mut Silent,
    )
    .unwrap_err();
    match err {
        StageError::Latency(m) => assert!(m.contains("was measured for MobileNetV2 w0.5"), "{m}"),
        e => panic!("expected a latency-table error, got {e}"),
    }
    // A table read from a file names it.
    let bogus = dir.join("bogus.json");
    std::fs::write(&bogus, "{}").unwrap();
    let err = LatencyTable::read(&bogus, None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus.json: not a latency table"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
