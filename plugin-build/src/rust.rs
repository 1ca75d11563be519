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
        let inherited_build_setting =
            (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
                || key.starts_with("RUST")
                || key == "TARGET"
                || key == "HOST"
                || key == "OUT_DIR"
                || key == "PROFILE"
                || key == "OPT_LEVEL"
                || key == "DEBUG";
        if inherited_build_setting && key != "RUSTUP_HOME" && key != "RUSTUP_TOOLCHAIN" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// The library name cargo gives the crate in `dir` (its `[lib] name`, else
/// the package name with `-` as `_`).
pub fn crate_name(dir: &Path) -> Result<String, Error> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| Error::Project {
        dir: dir.to_path_buf(),
        message: format!("Cargo.toml: {e}"),
    })?;
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
