//! `depthshrink study`: runs a study plan (e.g. configs/study-cifar10.toml) network by
//! network through the library's stages, resumably; `latency --study` and `report` follow.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use depthshrink_shrinker::study::{StudyPlan, run_network};

use crate::train::Progress;

#[derive(Args)]
pub struct StudyArgs {
    /// The plan: the shared recipe and the networks (see configs/study-cifar10.toml).
    #[arg(value_name = "PLAN")]
    plan: PathBuf,
    /// Run only these networks (by name; repeatable) [default: every network of the plan].
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
}

pub fn run(args: &StudyArgs) -> Result<(), String> {
    let plan = StudyPlan::read(&args.plan).map_err(|e| e.to_string())?;
    if let Some(name) = args
        .only
        .iter()
        .find(|n| !plan.networks.iter().any(|p| &&p.name == n))
    {
        return Err(format!(
            "--only {name}: no such network in {}",
            args.plan.display()
        ));
    }
    let chosen: Vec<_> = plan
        .networks
        .iter()
        .filter(|n| args.only.is_empty() || args.only.contains(&n.name))
        .collect();
    let started = Instant::now();
    for (i, net) in chosen.iter().enumerate() {
        println!(
            "\n== [{}/{}] {} ({})",
            i + 1,
            chosen.len(),
            net.name,
            net.method.label()
        );
        let record = run_network(&plan, &args.plan, net, &mut Progress::new())
            .map_err(|e| format!("{}: {e}", net.name))?;
        println!(
            "{}: top-1 {:.2}%{} → {}",
            record.name,
            record.top1,
            record.keep.as_ref().map_or(String::new(), |k| format!(
                ", {} of {} kept",
                k.kept(),
                k.len()
            )),
            plan.out.join(&record.name).display()
        );
    }
    println!(
        "\n{} networks in {:.0} s; next: `depthshrink latency --study {}` and `depthshrink report {}`",
        chosen.len(),
        started.elapsed().as_secs_f64(),
        plan.out.display(),
        plan.out.display()
    );
    Ok(())
}
