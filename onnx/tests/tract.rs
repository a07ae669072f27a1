//! Every kind of network, exported and run in tract (an independent ONNX runtime, pure Rust),
//! gives depthshrink's own logits: original, activations removed (pad-first) and merged; CIFAR
//! and ImageNet layouts; MobileNetV2 and EfficientNet-Lite0; batch 1 and 3; odd input sizes.

use depthshrink_autograd::Var;
use depthshrink_nn::activation::{Act, SearchGates};
use depthshrink_nn::arch::ArchConfig;
use depthshrink_nn::network::Network;
use depthshrink_nn::{Ctx, Entry, Module};
use depthshrink_onnx::proto::ModelProto;
use depthshrink_onnx::proto::tensor_shape_proto::dimension::Value as Dim;
use depthshrink_onnx::{BATCH, INPUT, OPSET, OUTPUT, to_model};
use depthshrink_shrinker::merge::{blocks_to_merge, merge_network};
use depthshrink_tensor::Tensor;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, tvec};

/// Config D of the paper (depthshrinker.md §7): 12 of MobileNetV2's 19 activations removed.
const CONFIG_D: &str = "0,0,0,0,1,1,0,0,0,0,0,0,0,0,1,1,1,1,1";

/// A network with non-trivial BN statistics and biases, so that folding is really exercised.
fn network(arch: ArchConfig, seed: u64) -> Network {
    let mut net = Network::new(&arch, seed);
    let mut rng = StdRng::seed_from_u64(seed);
    net.visit("", &mut |name, entry| {
        let (lo, hi) = match (&entry, name) {
            (Entry::Buffer(_), n) if n.ends_with("running_mean") => (-0.5, 0.5),
            (Entry::Buffer(_), _) => (0.5, 1.5),
            (Entry::Param(p), n) if p.value.ndim() == 1 && n.ends_with("weight") => (0.5, 1.5),
            (Entry::Param(p), _) if p.value.ndim() == 1 => (-0.3, 0.3),
            (Entry::Param(_), _) => return,
        };
        let t = match entry {
            Entry::Buffer(b) => b,
            Entry::Param(p) => &mut p.value,
        };
        t.data_mut()
            .iter_mut()
            .for_each(|v| *v = rng.random_range(lo..hi));
    });
    net
}

fn removed(mut net: Network, keep: &str) -> Network {
    net.apply_keep(&keep.parse::<depthshrink_nn::keep::KeepList>().unwrap())
        .unwrap();
    net
}

/// Every removed block merged, the depthwise-separable one included.
fn merged(net: &Network) -> Network {
    merge_network(net, &blocks_to_merge(net, true, None)).unwrap()
}

fn random_images(n: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let data = (0..n * 3 * h * w)
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    Tensor::from_vec(&[n, 3, h, w], data).unwrap()
}

/// Exports `net` for `h`×`w` inputs, checks the file's interface and operators, and compares
/// tract's logits with depthshrink's at batch 1 and 3 (one loaded model: the batch is symbolic).
/// Returns the model for further checks.
fn check(net: &Network, h: usize, w: usize) -> ModelProto {
    check_within(net, h, w, 1e-4)
}

/// [`check`] with the logits compared to `tolerance` relative to the largest.
fn check_within(net: &Network, h: usize, w: usize, tolerance: f32) -> ModelProto {
    let model = to_model(net, h, w).unwrap();
    let bytes = model.encode_to_vec();
    let model = ModelProto::decode(bytes.as_slice()).unwrap();
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].domain(), "");
    assert_eq!(model.opset_import[0].version(), OPSET);
    let graph = model.graph.as_ref().unwrap();
    for node in &graph.node {
        assert_eq!(node.domain(), "");
        let standard = [
            "Conv",
            "Clip",
            "Add",
            "Pad",
            "GlobalAveragePool",
            "Flatten",
            "Gemm",
        ];
        assert!(standard.contains(&node.op_type()), "{}", node.op_type());
    }
    let dims = |v: &depthshrink_onnx::proto::ValueInfoProto| -> Vec<Dim> {
        use depthshrink_onnx::proto::type_proto::Value;
        let Some(Value::TensorType(t)) = &v.r#type.as_ref().unwrap().value else {
            panic!("not a tensor")
        };
        let shape = t.shape.as_ref().unwrap();
        shape.dim.iter().map(|d| d.value.clone().unwrap()).collect()
    };
    let ([input], [output]) = (&graph.input[..], &graph.output[..]) else {
        panic!("one input and one output")
    };
    assert_eq!((input.name(), output.name()), (INPUT, OUTPUT));
    let (h64, w64) = (h as i64, w as i64);
    assert_eq!(
        dims(input),
        [
            Dim::DimParam(BATCH.into()),
            Dim::DimValue(3),
            Dim::DimValue(h64),
            Dim::DimValue(w64)
        ]
    );
    let classes = net.spec.num_classes as i64;
    assert_eq!(
        dims(output),
        [Dim::DimParam(BATCH.into()), Dim::DimValue(classes)]
    );

    let runnable = tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let mut own = net.clone();
    for (n, seed) in [(1, 1), (3, 2)] {
        let x = random_images(n, h, w, seed);
        let want = own
            .forward(&Var::constant(x.clone()), &Ctx::eval())
            .unwrap();
        let want = want.value().data();
        let t = tract_onnx::prelude::Tensor::from_shape(&[n, 3, h, w], x.data()).unwrap();
        let out = runnable.run(tvec!(t.into())).unwrap();
        let got = out[0].to_plain_array_view::<f32>().unwrap();
        assert_eq!(got.shape(), [n, net.spec.num_classes]);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= tolerance * scale,
            "{} at {n}×3×{h}×{w}: max |tract − depthshrink| = {diff:e}, max |logit| = {scale:e}",
            net.arch
        );
    }
    model
}

fn count(model: &ModelProto, op: &str) -> usize {
    let graph = model.graph.as_ref().unwrap();
    graph.node.iter().filter(|n| n.op_type() == op).count()
}

#[test]
fn mobilenet_v2_cifar_original_pad_first_and_merged() {
    let original = network(ArchConfig::mobilenet_v2(0.35, 10, true), 1);
    let model = check(&original, 32, 32);
    // Stem, the DS block's two convs, three per IR block, head; a Clip after each but projects.
    assert_eq!(count(&model, "Conv"), 1 + 2 + 16 * 3 + 1);
    assert_eq!(count(&model, "Clip"), 1 + 1 + 16 * 2 + 1);
    assert_eq!(count(&model, "Pad"), 0);

    // Config D removes the stem, DS and 10 IR blocks' activations: 10 pad-first blocks.
    let pad_first = removed(original, CONFIG_D);
    let model = check(&pad_first, 29, 31);
    assert_eq!(count(&model, "Pad"), 10);
    assert_eq!(count(&model, "Clip"), 10 + 6 * 2 + 1);

    // Merged: 11 blocks (the DS block too) are one conv each.
    let model = check(&merged(&pad_first), 29, 31);
    assert_eq!(count(&model, "Pad"), 0);
    assert_eq!(count(&model, "Conv"), 1 + 11 + 6 * 3 + 1);

    // Without the free ReLU6 after linearised blocks (the ablation), pad-first and merged: ten
    // randomly initialised linear blocks with nothing clipping between them carry more f32
    // rounding to the logits, so 1e-3 here (5.8e-4 measured; a block exported with the wrong
    // padding is off by ~0.1).
    let mut ablated = pad_first.clone();
    ablated.set_free_relu6(false);
    assert_eq!(
        count(&check_within(&ablated, 29, 31, 1e-3), "Clip"),
        6 * 2 + 1
    );
    let model = check_within(&merged(&ablated), 29, 31, 1e-3);
    assert_eq!(count(&model, "Clip"), 6 * 2 + 1);
}

#[test]
fn mobilenet_v2_imagenet_original_pad_first_and_merged() {
    let original = network(ArchConfig::mobilenet_v2(0.25, 7, false), 2);
    check(&original, 45, 39);
    let all_removed = "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0";
    let pad_first = removed(original, all_removed);
    assert_eq!(count(&check(&pad_first, 45, 39), "Pad"), 16);
    check(&merged(&pad_first), 45, 39);
}

/// Kernel size 5 (padding 2) in the pad-first and merged blocks.
#[test]
fn efficientnet_lite0_original_pad_first_and_merged() {
    let original = network(ArchConfig::efficientnet_lite0(5, false), 3);
    check(&original, 37, 37);
    // Every second IR block removed (k = 3 and 5, strides 1 and 2, with and without skip).
    let pad_first = removed(original, "1,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1");
    check(&pad_first, 37, 37);
    check(&merged(&pad_first), 37, 37);
}

/// A search checkpoint runs its gates at their current decision (plain identity, no pad-first),
/// and a network already folded for inference exports to the same bytes.
#[test]
fn gated_and_folded_networks_export_what_they_compute() {
    let mut net = network(ArchConfig::mobilenet_v2(0.35, 10, true), 4);
    let mut gates = SearchGates::new(12, vec![true; net.num_acts()]);
    gates.scores.value = Tensor::from_vec(
        &[net.num_acts()],
        (0..net.num_acts()).map(|i| ((i * 7) % 5) as f32).collect(),
    )
    .unwrap();
    net.search = Some(gates);
    let acts: Vec<Act> = (0..net.num_acts())
        .map(|index| Act::Gated { index })
        .collect();
    net.set_acts(&acts).unwrap();
    let inference = net.for_inference().unwrap();
    let model = check(&inference, 32, 32);
    assert!(model == to_model(&net, 32, 32).unwrap());
    assert_eq!(count(&model, "Pad"), 0);
    // Kept: stem, DS block, head and 9 IR blocks (two Clips each); removed sites have none.
    assert_eq!(count(&model, "Clip"), 3 + 9 * 2);
    let doc = model.doc_string();
    assert!(doc.contains("(12 of 19 activations kept)"), "{doc}");
}

#[test]
fn an_empty_input_size_is_refused() {
    let net = network(ArchConfig::mobilenet_v2(0.35, 10, true), 5);
    let err = to_model(&net, 0, 32).unwrap_err().to_string();
    assert!(err.contains("input size 0×32"), "{err}");
}
