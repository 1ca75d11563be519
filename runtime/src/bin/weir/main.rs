//! The `weir` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod admin;
mod plugin_dev;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weir::cluster::Replica;
use weir::{Pipeline, PluginEngine, Query, QueryOutcome, WeirError};
use weir_plugin_build::Language;

// Batches are large, short-lived allocations; glibc's malloc hands many of
// them back to the kernel and page-faults them in again on every batch.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: streaming dataflow with WebAssembly plugins over Arrow batches.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its trigger drains the input, or until Ctrl-C / SIGTERM.
    ///
    /// Restarting on the same checkpoint resumes exactly where the last run
    /// stopped: a batch in flight at a crash is replayed with the same input,
    /// and the sink never receives a batch twice.
    Run {
        /// Pipeline file (TOML).
        pipeline: PathBuf,
        /// Do not print a progress line per batch.
        #[arg(long)]
        quiet: bool,
        /// Also append each batch's progress as one JSON line (Spark's
        /// field names) to this file.
        #[arg(long, value_name = "FILE")]
        progress_log: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Serve the web console for this query at http://ADDR/console/
        /// (loopback only, e.g. 127.0.0.1:7071); its token goes to a file
        /// only you can read, whose path is printed.
        #[arg(long, value_name = "ADDR")]
        ui: Option<std::net::SocketAddr>,
        /// Run as this replica of a `[cluster]` query (its static group
        /// membership; default: $WEIR_REPLICA_ID, else the host name).
        #[arg(long, value_name = "ID")]
        replica: Option<String>,
    },
    /// Run committed batches again offline, from what the checkpoint
    /// recorded (input plans, plugin versions, quarantined rows, clock and
    /// seed), and print how the output differs from what the sink
    /// committed; with --stage and --plugin, what a new version of a stage
    /// would have made of them. Writes nothing.
    Replay {
        /// Pipeline file (TOML) whose checkpoint and sink to read.
        pipeline: PathBuf,
        /// The batches: N, or N..M (inclusive).
        #[arg(long, value_parser = parse_batches)]
        batch: std::ops::RangeInclusive<u64>,
        /// The stage to run a candidate component in.
        #[arg(long, requires = "plugin")]
        stage: Option<String>,
        /// The candidate component (.wasm).
        #[arg(long, requires = "stage")]
        plugin: Option<PathBuf>,
        /// The candidate's `config`, as JSON (default: the batch's).
        #[arg(long, requires = "plugin")]
        config: Option<String>,
        /// Rows of each side of the diff shown per batch.
        #[arg(long, default_value_t = 20)]
        max_rows: usize,
        /// Exit with status 1 when the output differs.
        #[arg(long)]
        fail_on_diff: bool,
    },
    /// Check a pipeline file and its plugins without running anything.
    Validate {
        /// Pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Print a pipeline's plan: its steps, the tasks that run each, how rows
    /// reach it (forward, or shuffled by key into key groups) and where its
    /// state lives. Reads the checkpoint's key groups if it has started.
    Explain {
        /// Pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Create a project: `weir new plugin NAME --lang rust|python|js|c`.
    New {
        #[command(subcommand)]
        command: NewCommand,
    },
    /// Host many queries (of many tenants) with an HTTP admin API; queries
    /// submitted earlier resume from their checkpoints.
    ///
    /// Every request needs a bearer token. Without `--access`, the host
    /// makes an admin token at STATE_DIR/access/admin.token; an admin
    /// issues tenants' tokens with `weir token issue TENANT`.
    Serve {
        /// Address of the admin API (and /metrics). Loopback only: the API
        /// has no TLS of its own (put a TLS-terminating proxy in front).
        #[arg(long, default_value = "127.0.0.1:7070")]
        addr: std::net::SocketAddr,
        /// Where submitted pipelines and their default checkpoints live.
        #[arg(long, default_value = ".weir-serve")]
        state_dir: PathBuf,
        /// The operator's access file: tokens (as SHA-256), tenants' quotas
        /// and ceilings, and the connections granted to each.
        #[arg(long, value_name = "FILE")]
        access: Option<PathBuf>,
        /// Another `Host` name clients use (e.g. `weir.internal:443` behind
        /// a proxy); loopback names are always accepted.
        #[arg(long, value_name = "HOST:PORT")]
        public_name: Vec<String>,
        /// At most this many running queries per tenant.
        #[arg(long, default_value_t = 16)]
        max_queries_per_tenant: usize,
        /// At most this much plugin memory per tenant (the sum of its
        /// running queries' `memory_limit`s), e.g. 4GiB.
        #[arg(long)]
        max_memory_per_tenant: Option<bytesize::ByteSize>,
    },
    /// Submit a pipeline to a `weir serve` host, as the token's tenant.
    Submit {
        /// Pipeline file (TOML); relative paths in it resolve on the host,
        /// in the query's own directory.
        pipeline: PathBuf,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Upload a plugin component; prints the `sha256:` reference that
    /// pipelines and swaps name it by.
    Upload {
        /// The component (.wasm).
        plugin: PathBuf,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Show the queries of a `weir serve` host, or one (`tenant/name`); or,
    /// given a `[cluster]` pipeline file (`*.toml`), its replicas: each
    /// one's shards, a state shard's key groups, and the shards no live
    /// replica runs (read from the reports replicas keep in the checkpoint).
    Status {
        /// `tenant/name` on a `weir serve` host, or a pipeline file.
        id: Option<String>,
        /// A pipeline's replicas as JSON (a host's answer is always JSON).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Swap a transform plugin of a running query, from its next batch.
    Swap {
        /// `tenant/name`.
        id: String,
        /// Transform stage name.
        stage: String,
        /// The new component: a local .wasm file (uploaded first) or the
        /// `sha256:` reference of an upload.
        plugin: String,
        /// The stage's `config` for the new version, as JSON (default: as before).
        #[arg(long)]
        config: Option<String>,
        /// Do not swap: run the new version beside the live one on the
        /// next N batches, drop its output, and print how it differs from
        /// the live output and what it costs (the live output is untouched).
        #[arg(long, value_name = "N")]
        shadow: Option<u64>,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Stop a query after its current batch (it stays stopped).
    Stop {
        id: String,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Start a stopped query again, from its checkpoint.
    Start {
        id: String,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Look into a query's checkpoint (read-only; safe beside a running query).
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Tokens of a `weir serve` host.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Batches logged and committed, where a restart resumes, the last
    /// watermark, state versions, and files and bytes by part.
    Inspect {
        /// The checkpoint: a directory or an `s3://bucket/prefix`.
        location: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compact a stopped query's checkpoint now: each source's position
    /// as a compact entry, entries before the retained batches deleted,
    /// the file sink's log compacted (what a running query does every
    /// `compact_interval` batches).
    Compact {
        /// The pipeline whose checkpoint to compact.
        pipeline: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token and, for the access file, its SHA-256.
    New,
    /// Issue a token for a tenant (admin); printed once, stored hashed.
    Issue {
        tenant: String,
        #[command(flatten)]
        remote: admin::Remote,
    },
    /// Revoke every issued token of a tenant (admin).
    Revoke {
        tenant: String,
        #[command(flatten)]
        remote: admin::Remote,
    },
}

#[derive(Subcommand)]
enum NewCommand {
    /// A transform plugin project that `weir plugin build` builds as it is.
    Plugin {
        /// Plugin name (lowercase letters, digits, `-`, `_`).
        name: String,
        /// Source language.
        #[arg(long, value_parser = parse_language)]
        lang: Language,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust only: the Weir SDK (a checkout's sdk/ directory) to depend on
        /// (default: the checkout this weir was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// `N` or `N..M` (inclusive).
fn parse_batches(text: &str) -> Result<std::ops::RangeInclusive<u64>, String> {
    let number = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("`{text}`: expected a batch id N or a range N..M"))
    };
    let range = match text.split_once("..") {
        Some((from, to)) => number(from)?..=number(to.trim_start_matches('='))?,
        None => number(text)?..=number(text)?,
    };
    if range.is_empty() {
        return Err(format!("`{text}`: the range is empty"));
    }
    Ok(range)
}

fn parse_language(text: &str) -> Result<Language, String> {
    Language::ALL
        .into_iter()
        .find(|l| l.key() == text || (text == "javascript" && *l == Language::JavaScript))
        .ok_or_else(|| format!("`{text}`: expected rust, python, js or c"))
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Build a plugin project (a directory with weir-plugin.toml, or a Rust
    /// crate) to a component, with whatever toolchain this machine has; says
    /// what to install when there is none.
    Build {
        /// Project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component (default: DIR/target/wasm).
        #[arg(long, short)]
        out_dir: Option<PathBuf>,
    },
    /// Show which Weir world a component implements, what it imports and
    /// exports, and whether this host can run it (exit 1 if not).
    Inspect {
        /// Component file (.wasm).
        component: PathBuf,
    },
    /// Run a transform component over a file, with a query's limits:
    /// prints its output as JSON lines, or its error (a trap with the Wasm
    /// backtrace); with --quarantine, the rows it fails on and the rest.
    Test {
        /// Component file (.wasm).
        component: PathBuf,
        /// Input rows: .json/.jsonl (JSON lines), .csv (with a header) or
        /// .parquet; the schema is inferred.
        #[arg(long)]
        input: PathBuf,
        /// The stage's `config`, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Rows per plugin call.
        #[arg(long, default_value_t = 1024)]
        batch_size: usize,
        /// Per-call time limit (as a stage's `timeout`).
        #[arg(long, default_value = "60s")]
        timeout: String,
        /// Memory limit (as a stage's `memory_limit`).
        #[arg(long, default_value = "1GiB")]
        memory_limit: String,
        /// Set aside the rows the plugin fails on (as on_error =
        /// "quarantine") and print them to stderr.
        #[arg(long)]
        quarantine: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| {
            // The Delta kernel narrates every snapshot, and logs a
            // table not created yet as an error; what matters of it
            // reaches Weir's own errors.
            EnvFilter::new("info,buoyant_kernel=off,deltalake_core=error")
        }))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    // Plugin-project commands need neither the async runtime nor a host.
    let command = match plugin_dev::dispatch(cli.command) {
        Ok(exit) => return exit,
        Err(other) => *other,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            // 2: the user must fix the pipeline file; 1: anything else.
            if matches!(e, WeirError::Config(_)) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn dispatch(command: Command) -> Result<(), WeirError> {
    match command {
        Command::Serve {
            addr,
            state_dir,
            access,
            public_name,
            max_queries_per_tenant,
            max_memory_per_tenant,
        } => {
            admin::serve(
                addr,
                &public_name,
                weir::serve::HostConfig {
                    state_dir,
                    access_file: access,
                    max_queries_per_tenant,
                    max_memory_per_tenant: max_memory_per_tenant.map(|b| b.as_u64()),
                },
            )
            .await
        }
        Command::Submit { pipeline, remote } => remote.client()?.submit(&pipeline).await,
        Command::Upload { plugin, remote } => {
            println!("{}", remote.client()?.upload(&plugin).await?);
            Ok(())
        }
        Command::Status {
            id: Some(file),
            json,
            ..
        } if file.ends_with(".toml") => {
            let pipeline = Pipeline::load(Path::new(&file))?;
            let status = weir::cluster::cluster_status(&pipeline).await?;
            print_report(&status, json);
            Ok(())
        }
        Command::Status { id, remote, .. } => remote.client()?.status(id.as_deref()).await,
        Command::Swap {
            id,
            stage,
            plugin,
            config,
            shadow,
            remote,
        } => {
            let client = remote.client()?;
            client
                .swap(&id, &stage, &plugin, config.as_deref(), shadow)
                .await?;
            match shadow {
                Some(_) => client.wait_for_shadow(&id).await,
                None => Ok(()),
            }
        }
        Command::Stop { id, remote } => remote.client()?.post(&id, "stop").await,
        Command::Start { id, remote } => remote.client()?.post(&id, "start").await,
        Command::Checkpoint {
            command: CheckpointCommand::Inspect { location, json },
        } => {
            let cwd = std::env::current_dir().map_err(|source| WeirError::Io {
                path: ".".into(),
                source,
            })?;
            let location = weir::storage::Location::parse_with(
                &location,
                &cwd,
                Some(&weir::storage::S3Options::default()),
            )
            .map_err(WeirError::Internal)?;
            let inspection = weir::checkpoint::inspect::inspect(&location).await?;
            print_report(&inspection, json);
            Ok(())
        }
        Command::Replay {
            pipeline,
            batch,
            stage,
            plugin,
            config,
            max_rows,
            fail_on_diff,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let candidate = stage
                .zip(plugin)
                .map(|(stage, plugin)| weir::query::Candidate {
                    stage,
                    plugin,
                    config_json: config,
                });
            let engine = PluginEngine::new()?;
            let replayed = weir::query::replay(&pipeline, &engine, batch, candidate).await?;
            let mut differs = false;
            for batch in &replayed {
                let diff = batch.diff();
                differs |= !diff.added.is_empty() || !diff.removed.is_empty();
                println!(
                    "batch {}: {} rows the same, {} committed rows not replayed (-), {} new rows (+){}",
                    batch.batch_id,
                    diff.same,
                    diff.removed.len(),
                    diff.added.len(),
                    if batch.quarantined > 0 {
                        format!(", {} rows quarantined", batch.quarantined)
                    } else {
                        String::new()
                    }
                );
                for row in diff.removed.iter().take(max_rows) {
                    println!("- {row}");
                }
                for row in diff.added.iter().take(max_rows) {
                    println!("+ {row}");
                }
                let hidden = diff.removed.len().saturating_sub(max_rows)
                    + diff.added.len().saturating_sub(max_rows);
                if hidden > 0 {
                    println!("  ({hidden} more; --max-rows shows more)");
                }
            }
            if differs && fail_on_diff {
                return Err(WeirError::Replay {
                    reason: "the replayed output differs from what the sink committed".into(),
                });
            }
            Ok(())
        }
        Command::Checkpoint {
            command: CheckpointCommand::Compact { pipeline },
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let done = weir::query::compact(&pipeline).await?;
            match done.batch {
                Some(batch) => println!(
                    "compacted {} through batch {batch}: {} old files deleted",
                    pipeline.checkpoint, done.deleted
                ),
                None => println!(
                    "{}: no committed batch, nothing to compact",
                    pipeline.checkpoint
                ),
            }
            Ok(())
        }
        Command::Token { command } => match command {
            TokenCommand::New => {
                let token = weir::serve::access::new_token();
                println!("{token}");
                println!(
                    "sha256 = \"{}\"",
                    weir::serve::access::token_digest_hex(&token)
                );
                Ok(())
            }
            TokenCommand::Issue { tenant, remote } => remote.client()?.tokens(&tenant, true).await,
            TokenCommand::Revoke { tenant, remote } => {
                remote.client()?.tokens(&tenant, false).await
            }
        },
        Command::Plugin {
            command: PluginCommand::Inspect { component },
        } => plugin_dev::inspect(&component),
        Command::New { .. }
        | Command::Plugin {
            command: PluginCommand::Build { .. } | PluginCommand::Test { .. },
        } => unreachable!("handled by plugin_dev::dispatch"),
        Command::Explain { pipeline } => {
            let pipeline = Pipeline::load(&pipeline)?;
            print!("{}", weir::query::Plan::of_checkpointed(&pipeline).await?);
            Ok(())
        }
        Command::Validate { pipeline } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let engine = PluginEngine::new()?;
            let transforms = pipeline.transforms.clone();
            let stateful = pipeline.stateful.clone();
            let sink_plugin = pipeline.sink.foreach_batch().cloned();
            // Plugin code runs off the async workers (WASI's sync host calls need that).
            tokio::task::spawn_blocking(move || {
                for t in &transforms {
                    engine
                        .load_transform(&t.name, &t.plugin)?
                        .instantiate(&t.config_json, t.limits)?;
                }
                if let Some(s) = &stateful {
                    engine
                        .load_stateful(&s.stage.name, &s.stage.plugin)?
                        .instantiate(&s.stage.config_json, s.stage.limits)?;
                }
                if let Some(f) = &sink_plugin {
                    engine
                        .load_batch_sink(&f.stage.name, &f.stage.plugin)?
                        .instantiate(&f.stage.config_json, f.stage.limits, Default::default())?;
                }
                Ok::<(), WeirError>(())
            })
            .await
            .map_err(|e| WeirError::Internal(e.to_string()))??;
            let described: Vec<String> = pipeline
                .inputs
                .iter()
                .map(|input| {
                    let what = match &input.source {
                        weir::config::SourceConfig::File(f) => format!(
                            "file source ({:?}, {} columns)",
                            f.format,
                            f.schema.fields().len()
                        ),
                        weir::config::SourceConfig::Kafka(k) => {
                            format!("kafka source ({:?})", k.topics)
                        }
                    };
                    if pipeline.inputs.len() > 1 {
                        format!("`{}` {what}", input.name)
                    } else {
                        what
                    }
                })
                .collect();
            let mut source = described.join(" + ");
            if let Some(join) = &pipeline.stream_join {
                source.push_str(&format!(" in a {:?} join", join.kind));
            }
            println!(
                "ok: query `{}`: {source}, {} plugin stage(s), {:?} sink, trigger {:?}",
                pipeline.name,
                pipeline.transforms.len(),
                pipeline.sink.kind(),
                pipeline.trigger
            );
            Ok(())
        }
        Command::Run {
            pipeline,
            quiet,
            progress_log,
            metrics_addr,
            ui,
            replica,
        } => {
            let pipeline = Pipeline::load(&pipeline)?;
            let refuse = |message: &str, hint: &str| {
                WeirError::Config(
                    weir::config::ConfigError::unplaced(&pipeline.name, message).hint(hint),
                )
            };
            if pipeline.cluster.is_none() && replica.is_some() {
                return Err(refuse(
                    "--replica runs a query that declares [cluster]",
                    "add [cluster] with a group_id, or run without --replica",
                ));
            }
            if pipeline.cluster.is_some() && ui.is_some() {
                return Err(refuse(
                    "--ui shows one process's query; a [cluster] query runs as replicas",
                    "watch each replica's --progress-log or --metrics-addr",
                ));
            }
            let metrics = match metrics_addr {
                Some(addr) => {
                    let listener = weir::metrics::bind(addr).await?;
                    let mut registry = prometheus_client::registry::Registry::default();
                    let metrics = weir::metrics::QueryMetrics::new(&mut registry);
                    tracing::info!("metrics on http://{addr}/metrics");
                    tokio::spawn(async move {
                        if let Err(e) =
                            weir::metrics::serve(listener, std::sync::Arc::new(registry)).await
                        {
                            tracing::warn!("{e}");
                        }
                    });
                    Some(metrics)
                }
                None => None,
            };
            let mut log = match &progress_log {
                Some(path) => Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| WeirError::Io {
                            path: path.clone(),
                            source,
                        })?,
                ),
                None => None,
            };
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stop_tx = std::sync::Arc::new(stop_tx);
            let stopper = stop_tx.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("stop requested: finishing the current batch");
                let _ = stopper.send(true);
            });
            if pipeline.cluster.is_some() {
                let id = replica.unwrap_or_else(weir::cluster::default_replica_id);
                let name = pipeline.name.clone();
                let replica = Replica::new(pipeline, PluginEngine::new()?, &id)?
                    .with_stop_signal(stop_rx)
                    .on_progress(move |shard, p| {
                        let label = format!("{name}/{shard}");
                        if !quiet {
                            eprintln!("[{shard}] {p}");
                        }
                        if let Some(metrics) = &metrics {
                            metrics.observe(&label, p);
                        }
                        if let Some(file) = &mut log {
                            let mut json = p.to_json();
                            json["name"] = name.clone().into();
                            json["shard"] = shard.to_string().into();
                            if let Err(e) = writeln!(file, "{json}") {
                                tracing::warn!("cannot write the progress log: {e}");
                            }
                        }
                    });
                let outcome = replica.run().await?;
                eprintln!(
                    "replica `{id}`: stopped after {} batch(es) of its shards",
                    outcome.batches
                );
                return Ok(());
            }
            let name = pipeline.name.clone();
            let query_name = name.clone();
            let mut query =
                Query::new(pipeline.clone(), PluginEngine::new()?).with_stop_signal(stop_rx);
            let console = match ui {
                Some(addr) => {
                    Some(admin::serve_console(addr, &pipeline, query.control(), stop_tx).await?)
                }
                None => None,
            };
            let observer = console.clone();
            let query = query.on_progress(move |p| {
                if let Some(console) = &observer {
                    console.observe(p);
                }
                if !quiet {
                    eprintln!("{p}");
                }
                if let Some(metrics) = &metrics {
                    metrics.observe(&query_name, p);
                }
                if let Some(file) = &mut log {
                    let mut json = p.to_json();
                    json["name"] = query_name.clone().into();
                    // A full disk must not stop the query; say so and go on.
                    if let Err(e) = writeln!(file, "{json}") {
                        tracing::warn!("cannot write the progress log: {e}");
                    }
                }
            });
            let outcome = query.run().await;
            if let Some(console) = &console {
                console.finished(&outcome);
                console.close();
            }
            match outcome? {
                QueryOutcome::Drained { batches } => {
                    eprintln!(
                        "query `{name}`: all available input processed in {batches} batch(es)"
                    )
                }
                QueryOutcome::Stopped { batches } => {
                    eprintln!("query `{name}`: stopped after {batches} batch(es)")
                }
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Prints `report` as text, or as pretty JSON with `--json`.
fn print_report<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        let text = report.to_string();
        println!("{}", text.trim_end());
    }
}
