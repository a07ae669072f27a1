//! ONNX export of depthshrink networks, so a deployed runtime (ONNX Runtime, TensorRT, OpenVINO,
//! ncnn, tract) can run, and check, exactly the network depthshrink runs.
//!
//! [`to_model`] turns a [`Network`] into an ONNX model of standard opset-[`OPSET`] operators
//! and nothing custom: every batch norm folded into its conv (the project's own folding,
//! [`ConvBn::folded`]), ReLU6 as `Clip(0, 6)`, one input [`INPUT`] `N×3×H×W` (batch size
//! symbolic, spatial size fixed) and one output [`OUTPUT`] `N×classes`. Each kind of block is
//! written as depthshrink computes it:
//!
//! - an original block: expand conv → Clip → depthwise conv → Clip → project conv (→ Add);
//! - a block whose activations were removed (pad-first, depthshrinker.md §5): Pad → 1×1 conv →
//!   depthwise conv with padding 0 → 1×1 conv (→ Add) → Clip;
//! - a merged block: its one dense conv (→ Clip).
//!
//! [`save`] encodes the model and writes it atomically. The schema's types are in [`proto`],
//! compiled at build time from the ONNX project's `onnx.proto` (vendored in `proto/`).

#![warn(missing_docs)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use depthshrink_nn::activation::Act;
use depthshrink_nn::layers::{Conv2d, ConvBn};
use depthshrink_nn::network::{Block, InvertedResidual, Network};
use depthshrink_tensor::conv::ConvParams;
use depthshrink_tensor::{Tensor, TensorError};
use prost::Message;

use proto::attribute_proto::AttributeType;
use proto::tensor_proto::DataType;
use proto::tensor_shape_proto::{Dimension, dimension};
use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, type_proto,
};

/// The ONNX schema's types (`proto/onnx.proto` of ONNX 1.22, compiled by prost at build time).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// The operator set the graphs use: 13 has every operator needed (Clip and Pad take their
/// bounds and pads as inputs since 11) and every runtime in use reads it.
pub const OPSET: i64 = 13;

/// The IR version that goes with opset 13 (ONNX 1.8).
pub const IR_VERSION: i64 = 7;

/// Name of the graph's input, `N×3×H×W` f32.
pub const INPUT: &str = "input";

/// Name of the graph's output, `N×classes` f32.
pub const OUTPUT: &str = "logits";

/// Name of the symbolic batch dimension of [`INPUT`] and [`OUTPUT`].
pub const BATCH: &str = "N";

/// What can go wrong exporting a network.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The input size is not a real image size.
    #[error("input size {height}×{width}: both sides must be at least 1 pixel")]
    InputSize {
        /// Requested height.
        height: usize,
        /// Requested width.
        width: usize,
    },
    /// A weight could not be prepared (folding or reshaping failed).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The ONNX file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The ONNX model of `net` in evaluation mode for `height`×`width` inputs (any batch size).
///
/// `net` is a network as built or loaded, any variant: original, with activations removed
/// (pad-first blocks), merged, or a search checkpoint (its gates at their current decision);
/// the graph computes what [`Network::for_inference`] of it computes.
pub fn to_model(net: &Network, height: usize, width: usize) -> Result<ModelProto, ExportError> {
    if height == 0 || width == 0 {
        return Err(ExportError::InputSize { height, width });
    }
    // Exactly what evaluation runs: batch norms folded, a search's gates fixed to its decision.
    let net = &net.for_inference()?;
    let mut g = Graph::default();
    let mut x = g.conv_bn("features.0", INPUT.into(), &net.stem, None)?;
    x = g.act("features.0", x, net.stem_act);
    for (i, block) in net.blocks.iter().enumerate() {
        let name = format!("features.{}", i + 1);
        x = match block {
            Block::Ir(b) => match &b.expand {
                Some(expand) if b.linearised => g.pad_first(&name, x, b, expand)?,
                _ => g.block(&name, x, b)?,
            },
            Block::Merged(m) => {
                let y = g.conv(&format!("{name}.merged"), x, &m.conv);
                if m.relu6 { g.clip(&name, y) } else { y }
            }
        };
    }
    let head = format!("features.{}", net.blocks.len() + 1);
    x = g.conv_bn(&head, x, &net.head, None)?;
    x = g.act(&head, x, net.head_act);
    x = g.node("GlobalAveragePool", "pool", vec![x], vec![]);
    x = g.node("Flatten", "flatten", vec![x], vec![int("axis", 1)]);
    let fc = &net.classifier;
    let inputs = vec![
        x,
        g.initializer("classifier.1.weight", &fc.weight.value),
        g.initializer("classifier.1.bias", &fc.bias.value),
    ];
    let logits = g.node("Gemm", OUTPUT, inputs, vec![int("transB", 1)]);

    let (c, h, w) = (3, dim(height), dim(width));
    use Dim::{Fixed, Symbol};
    let input = value_info(INPUT, &[Symbol(BATCH), Fixed(c), Fixed(h), Fixed(w)]);
    let classes = dim(net.spec.num_classes);
    let output = value_info(&logits, &[Symbol(BATCH), Fixed(classes)]);
    let variant = net.variant();
    let merged = variant.merged.iter().filter(|&&m| m).count();
    let doc = format!(
        "{}; keep list {} ({} of {} activations kept), {merged} of {} blocks merged",
        net.arch,
        variant.keep,
        variant.keep.iter().filter(|&&k| k).count(),
        variant.keep.len(),
        variant.merged.len()
    );
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("depthshrink".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(doc),
        // What depthshrink's own checkpoints record, so the file says which network it holds.
        metadata_props: vec![StringStringEntryProto {
            key: Some("depthshrink".into()),
            value: Some(net.metadata().to_string()),
        }],
        graph: Some(GraphProto {
            name: Some(net.arch.to_string()),
            node: g.nodes,
            initializer: g.initializers,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Encodes `model` and writes it to `path` atomically; returns the file's size in bytes.
pub fn save(model: &ModelProto, path: &Path) -> Result<usize, ExportError> {
    let bytes = model.encode_to_vec();
    depthshrink_nn::checkpoint::write_atomic(path, &bytes).map_err(|source| {
        ExportError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(bytes.len())
}

/// The nodes and initialisers of a graph being built. Every node's output is named after the
/// node, and every initialiser after its layer (`features.I` numbered as torchvision does).
#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// Names of shared initialisers already added (Clip bounds, Pad amounts).
    shared: HashSet<String>,
}

impl Graph {
    /// A block as trained (or with its activations removed but no pad-first: the DS block).
    fn block(
        &mut self,
        name: &str,
        x: String,
        b: &InvertedResidual,
    ) -> Result<String, ExportError> {
        let mut h = x.clone();
        if let Some(expand) = &b.expand {
            h = self.conv_bn(&format!("{name}.expand"), h, expand, None)?;
            h = self.act(&format!("{name}.expand"), h, b.act);
        }
        h = self.conv_bn(&format!("{name}.dw"), h, &b.dw, None)?;
        h = self.act(&format!("{name}.dw"), h, b.act);
        let out = self.conv_bn(&format!("{name}.project"), h, &b.project, None)?;
        Ok(self.skip(name, out, x, b))
    }

    /// A linearised block, pad-first: pad the input by k/2, expand it, depthwise conv without
    /// padding, project, add the skip, ReLU6 unless ablated (exactly what its merged conv
    /// computes).
    fn pad_first(
        &mut self,
        name: &str,
        x: String,
        b: &InvertedResidual,
        expand: &ConvBn,
    ) -> Result<String, ExportError> {
        let p = b.spec.k / 2;
        let pads = self.shared_int64(
            &format!("pads.{p}"),
            &[0, 0, p as i64, p as i64, 0, 0, p as i64, p as i64],
        );
        let padded = self.node("Pad", &format!("{name}.pad"), vec![x.clone(), pads], vec![]);
        let h = self.conv_bn(&format!("{name}.expand"), padded, expand, Some(0))?;
        let d = self.conv_bn(&format!("{name}.dw"), h, &b.dw, Some(0))?;
        let out = self.conv_bn(&format!("{name}.project"), d, &b.project, None)?;
        let out = self.skip(name, out, x, b);
        Ok(if b.free_relu6 {
            self.clip(name, out)
        } else {
            out
        })
    }

    fn skip(&mut self, name: &str, out: String, x: String, b: &InvertedResidual) -> String {
        if b.spec.has_skip() {
            self.node("Add", &format!("{name}.add"), vec![out, x], vec![])
        } else {
            out
        }
    }

    /// A conv with its batch norm folded in; `pad` overrides the conv's own padding.
    fn conv_bn(
        &mut self,
        name: &str,
        x: String,
        cb: &ConvBn,
        pad: Option<usize>,
    ) -> Result<String, ExportError> {
        let (w, b) = cb.folded()?;
        let params = ConvParams {
            pad: pad.unwrap_or(cb.conv.params.pad),
            ..cb.conv.params
        };
        Ok(self.conv_node(name, x, &w, Some(&b), params))
    }

    /// A conv as it is (a merged block's: bias included, no batch norm).
    fn conv(&mut self, name: &str, x: String, conv: &Conv2d) -> String {
        let bias = conv.bias.as_ref().map(|b| &b.value);
        self.conv_node(name, x, &conv.weight.value, bias, conv.params)
    }

    fn conv_node(
        &mut self,
        name: &str,
        x: String,
        w: &Tensor,
        b: Option<&Tensor>,
        p: ConvParams,
    ) -> String {
        let k = w.shape()[2] as i64;
        let (s, pad) = (p.stride as i64, p.pad as i64);
        let mut inputs = vec![x, self.initializer(&format!("{name}.weight"), w)];
        inputs.extend(b.map(|b| self.initializer(&format!("{name}.bias"), b)));
        let attrs = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[s, s]),
            ints("pads", &[pad, pad, pad, pad]),
            int("group", p.groups as i64),
        ];
        self.node("Conv", name, inputs, attrs)
    }

    /// `act` at a site: Clip(0, 6) for ReLU6, nothing for identity (no gated site is left after
    /// `for_inference`).
    fn act(&mut self, name: &str, x: String, act: Act) -> String {
        if act == Act::Identity {
            x
        } else {
            self.clip(name, x)
        }
    }

    fn clip(&mut self, name: &str, x: String) -> String {
        let min = self.shared_f32("relu6.min", 0.0);
        let max = self.shared_f32("relu6.max", 6.0);
        self.node("Clip", &format!("{name}.relu6"), vec![x, min, max], vec![])
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![name.into()],
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
        name.into()
    }

    /// Adds an f32 initialiser (little-endian raw data, as the spec stores it); returns its name.
    fn initializer(&mut self, name: &str, t: &Tensor) -> String {
        let raw = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims = t.shape().iter().map(|&d| d as i64).collect();
        self.push_initializer(name, DataType::Float, dims, raw)
    }

    fn shared_f32(&mut self, name: &str, value: f32) -> String {
        if self.shared.insert(name.into()) {
            self.push_initializer(name, DataType::Float, vec![], value.to_le_bytes().to_vec());
        }
        name.into()
    }

    fn shared_int64(&mut self, name: &str, values: &[i64]) -> String {
        if self.shared.insert(name.into()) {
            let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.push_initializer(name, DataType::Int64, vec![values.len() as i64], raw);
        }
        name.into()
    }

    fn push_initializer(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: Vec<i64>,
        raw: Vec<u8>,
    ) -> String {
        self.initializers.push(TensorProto {
            dims,
            data_type: Some(dtype as i32),
            name: Some(name.into()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.into()
    }
}

/// A side length as an ONNX dimension.
fn dim(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// One dimension of a graph input or output.
enum Dim<'a> {
    /// A size fixed in the graph.
    Fixed(i64),
    /// A named size the runtime takes from the data (the batch).
    Symbol(&'a str),
}

/// An f32 tensor value of the given shape.
fn value_info(name: &str, shape: &[Dim<'_>]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Symbol(s) => dimension::Value::DimParam((*s).into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
