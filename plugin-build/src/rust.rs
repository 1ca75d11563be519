//! Rust plugins: cargo for `wasm32-wasip2`, whose linker already writes a
//! component.
//!
//! Toolchain choice: `WEIR_WASM_CARGO` if set; else rustup's
//! `wasm32-wasip2` target when installed; else Debian's `rustc-web` with
//! `-Zbuild-std` (the path that works where rustup cannot download targets).
//! `WEIR_WASM_TOOLCHAIN=rustup|debian` forces one of the two.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Language, Project};

/// The Rust target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

const INSTALL: &str = "`rustup target add wasm32-wasip2`; where rustup cannot download \
     targets, Debian's `apt-get install rustc-web cargo-web rust-web-src lld-16 wasi-libc` and \
     `cargo install wasm-component-ld` (the repository's `./dev setup` does either)";

/// A `cargo` command set up to build for `wasm32-wasip2` (add `build`,
/// `--target wasm32-wasip2` and the rest), or what to install.
pub fn wasm_cargo() -> Result<Command, Error> {
    if let Ok(cargo) = env::var("WEIR_WASM_CARGO") {
        return Ok(clean(Command::new(cargo)));
    }
    let forced = env::var("WEIR_WASM_TOOLCHAIN").ok();
    match forced.as_deref() {
        Some("debian") => debian_cargo(),
        Some("rustup") | None if rustup_has_target() => Ok(clean(Command::new(
            env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        ))),
        Some("rustup") => Err(missing(format!(
            "WEIR_WASM_TOOLCHAIN=rustup but rustup has no {TARGET} target"
        ))),
        None => debian_cargo(),
        Some(other) => Err(missing(format!(
            "WEIR_WASM_TOOLCHAIN={other}: expected `rustup` or `debian`"
        ))),
    }
}

fn missing(what: String) -> Error {
    Error::ToolchainMissing {
        language: Language::Rust,
        missing: what,
        install: INSTALL.into(),
    }
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
}

fn debian_cargo() -> Result<Command, Error> {
    let required = [
        ("/usr/bin/cargo", "Debian package cargo-web"),
        ("/usr/bin/rustc", "Debian package rustc-web"),
        ("/usr/lib/llvm-16/bin", "Debian package lld-16"),
        ("/usr/lib/wasm32-wasi", "Debian package wasi-libc"),
    ];
    for (path, what) in required {
        if !Path::new(path).exists() {
            return Err(missing(format!(
                "rustup has no {TARGET} target and {path} ({what}) is missing"
            )));
        }
    }
    let home = env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cargo"));
    let linker = home.join("bin/wasm-component-ld");
    if !linker.is_file() {
        return Err(missing(format!(
            "the {TARGET} linker {} is missing",
            linker.display()
        )));
    }
    let mut cmd = clean(Command::new("/usr/bin/cargo"));
    let path = format!(
        "/usr/lib/llvm-16/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_WASM32_WASIP2_LINKER", linker)
        .env(
            "RUSTFLAGS",
            "-L /usr/lib/wasm32-wasi -L /usr/lib/llvm-16/lib/clang/16/lib/wasi",
        )
        .arg("-Zbuild-std=std,panic_abort");
    Ok(cmd)
}

/// Drops what an outer cargo (running a build script, or `cargo run`) set,
/// so the inner build neither inherits host flags nor fights over the outer
/// target directory.
fn clean(mut cmd: Command) -> Command {
    for (key, _) in env::vars() {
        let inherited_build_setting = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
                || key.starts_with("RUST")
                || key == "TARGET"
                || key == "HOST"
                || key == "OUT_DIR"
                || key == "PROFILE"
                || key == "OPT_LEVEL"
                || key == "DEBUG"
                // cargo clippy's (and ./dev test's) flags for clippy-driver.
                || key == "CLIPPY_ARGS";
        if inherited_build_setting && key != "RUSTUP_HOME" && key != "RUSTUP_TOOLCHAIN" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The library name cargo gives the crate in `dir` (its `[lib] name`, else
/// the package name with `-` as `_`).
pub fn crate_name(dir: &Path) -> Result<String, Error> {
    let doc = read_cargo_toml(dir)?;
    let name = |section: &str| {
        doc.get(section)
            .and_then(|s| s.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string)
    };
    name("lib")
        .or_else(|| name("package"))
        .ok_or_else(|| Error::Project {
            dir: dir.to_path_buf(),
            message: "Cargo.toml has no [package] name".into(),
        })
}

pub(crate) fn build(project: &Project, work: &Path, out: &Path) -> Result<(), Error> {
    let name = &project.manifest().name;
    // As cargo does: CARGO_TARGET_DIR shares builds of the SDK and arrow
    // between plugin projects.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.join("cargo"));
    let mut cmd = wasm_cargo()?;
    cmd.arg("build")
        .arg("--release")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(project.dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    crate::run(name, &mut cmd, || missing("cargo is not on PATH".into()))?;
    let stem = crate_name(project.dir())?.replace('-', "_");
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join(format!("{stem}.wasm"));
    std::fs::copy(&built, out).map_err(Error::io(&built))?;
    Ok(())
}

/// A cargo workspace of Rust plugins (a `Cargo.toml` with `[workspace]`
/// and no `[package]`, like the repository's `plugins/`), built in one cargo
/// run so that its plugins share one build of the SDK and arrow.
#[derive(Debug, Clone)]
pub struct Workspace {
    dir: PathBuf,
    /// (member directory, library name with `-` as `_`)
    members: Vec<(PathBuf, String)>,
}

impl Workspace {
    /// Whether `dir/Cargo.toml` is a workspace root rather than a crate.
    pub fn is_workspace(dir: &Path) -> bool {
        read_cargo_toml(dir)
            .is_ok_and(|doc| doc.contains_key("workspace") && !doc.contains_key("package"))
    }

    /// Reads the workspace at `dir`: its `members` (a path, or a directory
    /// followed by `/*` for each crate in it) and each member's crate name.
    pub fn open(dir: &Path) -> Result<Workspace, Error> {
        let dir = dir.canonicalize().map_err(Error::io(dir))?;
        let project_error = |message: String| Error::Project {
            dir: dir.clone(),
            message,
        };
        let doc = read_cargo_toml(&dir)?;
        let listed = doc
            .get("workspace")
            .and_then(|w| w.get("members"))
            .and_then(|m| m.as_array())
            .ok_or_else(|| project_error("Cargo.toml has no [workspace] members list".into()))?;
        let mut member_dirs = Vec::new();
        for entry in listed {
            let entry = entry
                .as_str()
                .ok_or_else(|| project_error(format!("workspace member {entry} is not a path")))?;
            match entry.strip_suffix("/*") {
                Some(parent) => {
                    let parent = dir.join(parent);
                    let listing = std::fs::read_dir(&parent).map_err(Error::io(&parent))?;
                    let mut crates: Vec<PathBuf> = listing
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.join("Cargo.toml").is_file())
                        .collect();
                    crates.sort();
                    member_dirs.extend(crates);
                }
                None if entry.contains(['*', '?', '[']) => {
                    return Err(project_error(format!(
                        "workspace member `{entry}`: only plain paths and `dir/*` are understood"
                    )));
                }
                None => member_dirs.push(dir.join(entry)),
            }
        }
        let members = member_dirs
            .into_iter()
            .map(|member| {
                let stem = crate_name(&member)?.replace('-', "_");
                Ok((member, stem))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if members.is_empty() {
            return Err(project_error("the workspace has no members".into()));
        }
        Ok(Workspace { dir, members })
    }

    /// The workspace directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Builds every member for `wasm32-wasip2` (release) in `target_dir`
    /// and returns the components, in member order. They stay where cargo
    /// writes them, `<target_dir>/wasm32-wasip2/release/<crate>.wasm`, so a
    /// second build with the same `target_dir` is a no-op.
    pub fn build(&self, target_dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let mut cmd = wasm_cargo()?;
        cmd.arg("build")
            .arg("--release")
            .args(["--target", TARGET])
            .arg("--workspace")
            .arg("--manifest-path")
            .arg(self.dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            // cargo's progress straight to the user: a cold build takes a
            // minute (inside a build script, cargo keeps it for failures).
            .stderr(std::process::Stdio::inherit());
        let name = self.dir.display().to_string();
        crate::run(&name, &mut cmd, || missing("cargo is not on PATH".into()))?;
        let artifacts = target_dir.join(TARGET).join("release");
        self.members
            .iter()
            .map(|(member, stem)| {
                let wasm = artifacts.join(format!("{stem}.wasm"));
                if wasm.is_file() {
                    Ok(wasm)
                } else {
                    Err(Error::Component {
                        name: member.display().to_string(),
                        message: format!(
                            "cargo succeeded but wrote no {} (is the crate a `cdylib`?)",
                            wasm.display()
                        ),
                    })
                }
            })
            .collect()
    }
}

fn read_cargo_toml(dir: &Path) -> Result<toml::Table, Error> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    toml::from_str(&text).map_err(|e| Error::Project {
        dir: dir.to_path_buf(),
        message: format!("Cargo.toml: {e}"),
    })
}
