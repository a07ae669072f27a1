//! Measures the training loader: `cargo run --release -p depthshrink-data --example
//! loader_throughput -- [DIR] [--batch N] [--inspect]` (DIR defaults to the synthetic set).
//! Prints images/s for an uncached epoch and for a cached loader's first and second epochs, and
//! the process CPU time per image, which says what two idle cores would reach on a busy machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use depthshrink_data::{
    InspectOptions, Loader, LoaderConfig, Result, Transform, inspect, open_or_synthetic,
};

fn main() -> Result<()> {
    let mut dir = None;
    let mut batch = 128;
    let mut show_inspect = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--batch" => batch = args.next().and_then(|b| b.parse().ok()).unwrap_or(batch),
            "--inspect" => show_inspect = true,
            _ => dir = Some(PathBuf::from(arg)),
        }
    }
    let splits = open_or_synthetic(dir.as_deref())?;
    let (train_tf, _) = splits.default_transforms(224)?;
    println!(
        "{} ({} train images), batch {batch}, rayon threads {}",
        splits.format.name(),
        splits.train.len(),
        rayon::current_num_threads()
    );
    if show_inspect {
        let started = Instant::now();
        let report = inspect(&splits, train_tf.clone(), &InspectOptions::default())?;
        println!(
            "inspect took {:.1} s: {report:#?}",
            started.elapsed().as_secs_f64()
        );
    }
    let epoch = |loader: &Loader, epoch: u64| -> Result<String> {
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let mut images = 0;
        for b in loader.epoch(epoch) {
            images += b?.labels.len();
        }
        let per_s = images as f64 / started.elapsed().as_secs_f64();
        let cpu_us = cpu_seconds()
            .zip(cpu)
            .map(|(b, a)| (b - a) * 1e6 / images as f64);
        Ok(match cpu_us {
            Some(us) => format!("{per_s:8.0} img/s ({us:5.1} CPU µs/img)"),
            None => format!("{per_s:8.0} img/s"),
        })
    };
    for cache in [false, true] {
        let config = LoaderConfig {
            cache,
            ..LoaderConfig::new(batch)
        };
        let loader = Loader::new(
            Arc::clone(&splits.train),
            Transform::new(train_tf.clone())?,
            config,
        )?;
        let first = epoch(&loader, 0)?;
        if cache {
            let second = epoch(&loader, 1)?;
            println!("cache on:  epoch 0 {first} (decoding), epoch 1 {second}");
        } else {
            println!("cache off: epoch 0 {first}");
        }
    }
    Ok(())
}

/// User + system CPU time of this process, from `/proc/self/stat` (Linux; 10 ms ticks).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
