//! The `lm-train` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lm_train::config::TrainConfig;
use lm_train::trainer::{default_device, Trainer};

#[derive(Parser)]
#[command(name = "lm-train", version, about = "Train language models on candle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a recipe or config file, or resume a run.
    Train(TrainArgs),
    /// Print text sampled from a run's latest checkpoint.
    Sample {
        /// The run directory.
        run: PathBuf,
        /// Characters to generate.
        #[arg(long, default_value_t = 500)]
        tokens: usize,
        /// Sampling seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// List the bundled recipes.
    Recipes,
}

#[derive(Args)]
#[group(required = true, multiple = false, id = "source")]
struct Source {
    /// A bundled recipe (see `lm-train recipes`).
    #[arg(long)]
    recipe: Option<String>,
    /// A TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Resume the run in this directory from its newest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    source: Source,
    /// Run directory (default: runs/<recipe>, or the first free runs/<recipe>-N).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop after this many optimizer steps (the learning-rate schedule is unchanged).
    #[arg(long)]
    max_iters: Option<u64>,
    /// No progress bar or evaluation lines.
    #[arg(long)]
    quiet: bool,
}

fn free_run_dir(name: &str) -> PathBuf {
    let base = Path::new("runs").join(name);
    (1..)
        .map(|i| {
            if i == 1 {
                base.clone()
            } else {
                PathBuf::from(format!("{}-{i}", base.display()))
            }
        })
        .find(|p| !p.exists())
        .expect("some name is free")
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let device = default_device();
    let mut trainer = if let Some(dir) = &args.source.resume {
        let t = Trainer::resume(dir, args.max_iters, device)?;
        println!("resuming {} at step {}", dir.display(), t.step());
        t
    } else {
        let (mut cfg, name) = match (&args.source.recipe, &args.source.config) {
            (Some(r), _) => (TrainConfig::recipe(r)?, r.clone()),
            (_, Some(path)) => {
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "run".into());
                (TrainConfig::from_file(path)?, name)
            }
            _ => unreachable!("clap requires one source"),
        };
        if let Some(n) = args.max_iters {
            cfg.train.max_iters = n;
        }
        let out = args.out.clone().unwrap_or_else(|| free_run_dir(&name));
        println!("training {name} into {}", out.display());
        Trainer::new(cfg, &out, device)?
    };
    trainer.verbose = !args.quiet;
    let n_params = trainer.params().num_params();
    println!("{:.2} M parameters", n_params as f64 / 1e6);
    let summary = trainer.train()?;
    if let Some((tr, va)) = summary.last_eval {
        println!(
            "final: step {}, train loss {tr:.4}, val loss {va:.4}",
            summary.step
        );
    }
    if let Some(dir) = &summary.checkpoint {
        println!("checkpoint: {}", dir.display());
    }
    let n = trainer.config().train.sample_tokens;
    if n > 0 {
        println!(
            "--- sample ---\n{}\n--------------",
            trainer.sample(n, trainer.config().train.seed)?
        );
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(args) => train(args),
        Command::Sample { run, tokens, seed } => {
            let trainer = Trainer::resume(&run, None, default_device())?;
            println!("{}", trainer.sample(tokens, seed)?);
            Ok(())
        }
        Command::Recipes => {
            for (name, _) in lm_train::config::RECIPES {
                println!("{name}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
