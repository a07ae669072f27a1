//! `depthshrink train`: trains a network from a TOML config (see `configs/`), with progress
//! bars on a terminal, a one-line summary per epoch, and exact resume from the last checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use depthshrink_shrinker::train::{
    BatchProgress, EpochMetrics, Observer, RunSummary, TrainConfig, Trainer, train,
};
use indicatif::{ProgressBar, ProgressStyle};

/// The default config: `configs/synthetic-mbv2.toml`, built in.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/synthetic-mbv2.toml");
const DEFAULT_STEM: &str = "synthetic-mbv2";

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub run: RunArgs,
}

/// What every training-like command (train, search, finetune, demo) takes.
#[derive(Args)]
pub struct ConfigArgs {
    /// Training config (TOML) [default: the built-in configs/synthetic-mbv2.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `data.dir`; CIFAR-10 binaries or class folders).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Output directory [default: runs/CONFIG-STEM, plus -search, -finetune or -demo
    /// for those commands].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Override a config value by its dotted key, e.g. `--set epochs=3 --set optim.momentum=0.8`
    /// (values are TOML; anything else is taken as a string). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// [`ConfigArgs`] plus `--resume`: train, search and finetune.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub setup: ConfigArgs,
    /// Continue the run in the output directory from its last.safetensors.
    #[arg(long)]
    pub resume: bool,
}

/// Reads the config (file or built-in) and applies `--set` and `--data`; returns it with its
/// stem (for the default output directory).
pub fn load_config(args: &ConfigArgs) -> Result<(TrainConfig, String), String> {
    let (text, stem) = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let stem = path
                .file_stem()
                .map_or("run".into(), |s| s.to_string_lossy().into_owned());
            (text, stem)
        }
        None => (DEFAULT_CONFIG.to_string(), DEFAULT_STEM.to_string()),
    };
    let mut overrides = args
        .set
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("--set {kv}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `--data` goes in with the overrides (last, so it wins), before the config is validated:
    // the config's own data.dir may not exist here.
    if let Some(dir) = &args.data {
        let dir = dir
            .to_str()
            .ok_or_else(|| format!("--data {}: not a UTF-8 path", dir.display()))?;
        overrides.push((
            "data.dir".into(),
            toml::Value::String(dir.into()).to_string(),
        ));
    }
    let name = args
        .config
        .as_ref()
        .map_or("the built-in config".into(), |p| p.display().to_string());
    let config = TrainConfig::from_toml(&text, &overrides).map_err(|e| format!("{name}: {e}"))?;
    Ok((config, stem))
}

impl ConfigArgs {
    /// The output directory: `--out`, else `runs/<stem><suffix>`.
    pub fn out_dir(&self, stem: &str, suffix: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(format!("{stem}{suffix}")))
    }
}

/// The most worker threads allowed: more than a few per core only adds scheduling overhead
/// (1000 threads made an 80-image evaluation take 16 s), and spawning 100,000 hangs.
pub const THREADS_PER_CORE: usize = 4;

/// Checks a thread count against this machine: 1 to [`THREADS_PER_CORE`] × its cores. `what`
/// names the setting, e.g. "--threads 9" or "threads = 9 in the config".
pub fn check_threads(n: usize, what: &str) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = THREADS_PER_CORE * cores;
    if n == 0 {
        return Err(format!("{what}: the thread count must be at least 1"));
    }
    if n > max {
        return Err(format!(
            "{what}: too many threads for this machine, which has {cores} cores: at most {THREADS_PER_CORE} × {cores} = {max}"
        ));
    }
    Ok(())
}

/// Starts the thread pool at the config's `threads` unless `--threads` already did.
pub fn config_threads(config: &TrainConfig, cli_threads: Option<usize>) -> Result<(), String> {
    if cli_threads.is_none()
        && let Some(n) = config.threads
    {
        check_threads(n, &format!("threads = {n} in the config"))?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("cannot start {n} threads: {e}"))?;
    }
    Ok(())
}

pub fn run(args: &TrainArgs, cli_threads: Option<usize>) -> Result<(), String> {
    let args = &args.run;
    let (config, stem) = load_config(&args.setup)?;
    config_threads(&config, cli_threads)?;
    let out = args.setup.out_dir(&stem, "");
    train(config, &out, args.resume, &mut Progress::new()).map_err(|e| e.to_string())?;
    Ok(())
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
}

/// Progress bars on a terminal (indicatif hides them otherwise), one line per epoch, and a
/// first and last line for the run.
pub struct Progress {
    /// When the command started (the run's last line gives the time since).
    started: Instant,
    bar: Option<ProgressBar>,
    epochs: usize,
    loss: Option<f64>,
    acc: Option<f64>,
    speed: Option<f64>,
}

impl Progress {
    /// Starts the clock of the run's last line.
    pub fn new() -> Progress {
        Progress {
            started: Instant::now(),
            bar: None,
            epochs: 0,
            loss: None,
            acc: None,
            speed: None,
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// A run that stops with an error leaves no half-drawn bar above the message.
    fn drop(&mut self) {
        self.clear();
    }
}

fn ema(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.9 * o + 0.1 * new))
}

impl Observer for Progress {
    /// The line a run starts with: what is trained on what, how long, and where it goes.
    fn run_start(&mut self, what: &str, trainer: &Trainer) {
        let c = &trainer.config;
        let splits = &trainer.data.splits;
        let data_name = splits
            .root
            .as_ref()
            .map_or("synthetic".into(), |p| p.display().to_string());
        let pos = trainer.position;
        let resumed = if trainer.resumed {
            format!(", resumed at epoch {} batch {}", pos.epoch + 1, pos.batch)
        } else {
            String::new()
        };
        println!(
            "{what} {} on {data_name}: {} train / {} test images, {} epochs × {} batches of {}, {} threads → {}{resumed}",
            trainer.model.arch,
            splits.train.len(),
            splits.test.len(),
            c.epochs,
            trainer.batches_per_epoch(),
            c.data.batch_size,
            rayon::current_num_threads(),
            trainer.out.display()
        );
    }

    /// The line a run ends with.
    fn run_done(&mut self, summary: &RunSummary, trainer: &Trainer) {
        self.clear();
        match &summary.last {
            Some(m) => println!(
                "done in {:.1} s: final val acc {}, best {}; weights in {}",
                self.started.elapsed().as_secs_f64(),
                pct(m.val_acc),
                pct(summary.best_val_acc),
                trainer.out.display()
            ),
            None => println!(
                "nothing to do: the run in {} is complete",
                trainer.out.display()
            ),
        }
    }

    fn epoch_start(&mut self, epoch: usize, epochs: usize, start_batch: usize, batches: usize) {
        self.clear();
        self.epochs = epochs;
        self.loss = None;
        self.acc = None;
        self.speed = None;
        let bar = ProgressBar::new(batches as u64).with_position(start_batch as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn batch_done(&mut self, p: &BatchProgress) {
        self.loss = ema(self.loss, p.loss as f64);
        self.acc = ema(self.acc, p.acc);
        self.speed = ema(self.speed, p.images_per_s);
        if let Some(bar) = &self.bar {
            bar.set_position(p.batch as u64 + 1);
            bar.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} img/s lr {:.4}",
                self.loss.unwrap_or(0.0),
                100.0 * self.acc.unwrap_or(0.0),
                self.speed.unwrap_or(0.0),
                p.lr
            ));
        }
    }

    fn evaluating(&mut self, _epoch: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message("evaluating…");
        }
    }

    fn epoch_done(&mut self, m: &EpochMetrics) {
        self.clear();
        let val = match (m.val_loss, m.val_acc) {
            (Some(l), Some(a)) => format!(
                "val loss {l:.4} acc {:.2}% (top-5 {})",
                100.0 * a,
                pct(m.val_top5)
            ),
            _ => "not evaluated".into(),
        };
        println!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% | {val} | lr {:.5} | {:.1} s, {:.1} img/s",
            m.epoch,
            self.epochs,
            m.train_loss,
            100.0 * m.train_acc,
            m.lr,
            m.seconds + m.eval_seconds,
            m.images_per_s
        );
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => println!("{message}"),
        }
    }
}
