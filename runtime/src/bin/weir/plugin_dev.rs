//! Plugin-author commands: `weir new plugin`, `weir plugin build`,
//! `weir plugin test` and `weir plugin inspect`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use weir::plugin::PluginInfo;
use weir::{PluginEngine, WeirError};
use weir_plugin_build::rust::Workspace;
use weir_plugin_build::{BuildOptions, Language, Project};

use crate::{Command, NewCommand, PluginCommand};

mod trial;
use trial::Trial;

/// Runs `weir new` and `weir plugin build`; any other command comes back.
pub fn dispatch(command: Command) -> Result<ExitCode, Box<Command>> {
    let result = match command {
        Command::New {
            command:
                NewCommand::Plugin {
                    name,
                    lang,
                    dir,
                    sdk,
                },
        } => new_plugin(&name, lang, dir, sdk.as_deref()),
        Command::Plugin {
            command: PluginCommand::Build { dir, out_dir },
        } => build(&dir, out_dir),
        Command::Plugin {
            command:
                PluginCommand::Test {
                    component,
                    input,
                    config,
                    batch_size,
                    timeout,
                    memory_limit,
                    quarantine,
                },
        } => {
            let trial = Trial {
                input: &input,
                config: &config,
                batch_size,
                timeout: &timeout,
                memory_limit: &memory_limit,
                quarantine,
            };
            trial.run(&component)
        }
        other => return Err(Box::new(other)),
    };
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    })
}

fn new_plugin(
    name: &str,
    language: Language,
    dir: Option<PathBuf>,
    sdk: Option<&Path>,
) -> Result<(), Box<dyn Error>> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = weir_plugin_build::new_plugin(&dir, name, language, sdk)?;
    println!("created {} ({language} transform plugin):", dir.display());
    for file in files {
        println!("  {}", file.display());
    }
    println!("build it with: weir plugin build {}", dir.display());
    Ok(())
}

fn build(dir: &Path, out_dir: Option<PathBuf>) -> Result<(), Box<dyn Error>> {
    if Workspace::is_workspace(dir) {
        return build_workspace(dir, out_dir);
    }
    let project = Project::open(dir)?;
    let manifest = project.manifest();
    let out_dir = out_dir.unwrap_or_else(|| project.dir().join("target/wasm"));
    eprintln!(
        "building {} ({} plugin, world {})",
        manifest.name, manifest.language, manifest.world
    );
    let started = Instant::now();
    let wasm = project.build(&BuildOptions::new(out_dir))?;
    eprintln!("built {} in {:.1?}", wasm.display(), started.elapsed());
    // A component this host cannot run is a failed build.
    inspect(&wasm)?;
    Ok(())
}

/// A cargo workspace of Rust plugins: every member in one cargo run, in
/// `$CARGO_TARGET_DIR` (as cargo would) or `DIR/target`; copied to
/// `out_dir` when one is given.
fn build_workspace(dir: &Path, out_dir: Option<PathBuf>) -> Result<(), Box<dyn Error>> {
    let workspace = Workspace::open(dir)?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.dir().join("target"), PathBuf::from);
    eprintln!(
        "building the Rust plugins of {} (cargo, wasm32-wasip2, release)",
        workspace.dir().display()
    );
    let started = Instant::now();
    let components = workspace.build(&target_dir)?;
    eprintln!(
        "built {} components in {:.1?}",
        components.len(),
        started.elapsed()
    );
    let engine = PluginEngine::with_cache(None)?;
    for built in components {
        let wasm = match &out_dir {
            Some(out_dir) => {
                std::fs::create_dir_all(out_dir)?;
                let copy = out_dir.join(built.file_name().unwrap_or_default());
                std::fs::copy(&built, &copy)?;
                copy
            }
            None => built,
        };
        let info = runnable(&wasm, engine.inspect(&wasm)?)?;
        eprintln!(
            "  {} ({} KiB, {})",
            wasm.display(),
            info.size / 1024,
            world_name(&info)
        );
    }
    Ok(())
}

/// Prints a component's world, exports and imports; an error if this host
/// cannot link it.
pub fn inspect(component: &Path) -> Result<(), WeirError> {
    let engine = PluginEngine::with_cache(None)?;
    let info = engine.inspect(component)?;
    println!("{}: {} KiB", component.display(), info.size / 1024);
    println!("world: {}", world_name(&info));
    println!("exports:");
    for export in &info.exports {
        println!("  {export}");
    }
    println!("imports:");
    for import in &info.imports {
        println!("  {import}");
    }
    runnable(component, info)?;
    println!("ok: this host can run it");
    Ok(())
}

fn world_name(info: &PluginInfo) -> String {
    info.world
        .as_ref()
        .map_or("none (not a Weir plugin)".to_string(), |w| {
            format!("weir:plugin {w}")
        })
}

/// An error naming the component when this host cannot link it.
fn runnable(component: &Path, info: PluginInfo) -> Result<PluginInfo, WeirError> {
    match info.link_error {
        None => Ok(info),
        Some(reason) => Err(WeirError::Plugin {
            stage: "inspect".into(),
            failure: weir::PluginFailure::Load {
                path: component.to_path_buf(),
                reason,
            },
        }),
    }
}
