//! Builds Weir plugins to WebAssembly components, whatever language they are
//! written in, with whatever toolchain the machine has.
//!
//! A plugin project is a directory with a `weir-plugin.toml` manifest (what
//! `weir new plugin` writes) or, for Rust, just a `Cargo.toml`:
//!
//! ```toml
//! name = "my-filter"
//! language = "c"               # rust | python | js | c
//! world = "transform-plugin"   # the WIT world it implements
//! wit = "wit"                  # the WIT package directory (default "wit")
//! ```
//!
//! [`Project::build`] turns it into one component. Each language finds its
//! toolchain the same way: an explicit environment variable first, then the
//! usual install locations, and when nothing is found the error says exactly
//! what to install ([`Error::ToolchainMissing`]).
//!
//! | language | toolchain | override |
//! |---|---|---|
//! | Rust | rustup's `wasm32-wasip2` target, else Debian's `rustc-web` with `-Zbuild-std` | `WEIR_WASM_CARGO`, `WEIR_WASM_TOOLCHAIN` |
//! | Python | `componentize-py` | `WEIR_COMPONENTIZE_PY` |
//! | JavaScript | `componentize-js` (npm) | `WEIR_COMPONENTIZE_JS` |
//! | C | wasi-sdk, else Debian's `clang-N` + `wasi-libc`; bindings and the component are made in-process | `WASI_SDK_PATH`, `WEIR_WASI_CC` |
//!
//! ```no_run
//! use std::path::Path;
//! use weir_plugin_build::{BuildOptions, Project};
//!
//! let project = Project::open(Path::new("plugins/c/enrich"))?;
//! let wasm = project.build(&BuildOptions::new("target/plugins"))?;
//! println!("built {}", wasm.display());
//! # Ok::<(), weir_plugin_build::Error>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod c;
mod javascript;
mod manifest;
mod python;
pub mod rust;
mod scaffold;

pub use manifest::{Language, MANIFEST_FILE, Manifest};
pub use scaffold::new_plugin;

/// Why a plugin could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The project directory or its manifest is not usable.
    #[error("plugin project {dir}: {message}")]
    Project {
        /// The project directory.
        dir: PathBuf,
        /// What is wrong, and how to fix it.
        message: String,
    },
    /// No toolchain for the language was found on this machine.
    #[error("no {language} toolchain for WebAssembly components: {missing}\nfix: {install}")]
    ToolchainMissing {
        /// The plugin's language.
        language: Language,
        /// What was looked for and not found.
        missing: String,
        /// What to install (or which variable to set).
        install: String,
    },
    /// The toolchain ran and failed; its output says why.
    #[error("building {name} failed: {command}\n{output}")]
    BuildFailed {
        /// The plugin's name.
        name: String,
        /// The command that failed.
        command: String,
        /// Its stdout and stderr.
        output: String,
    },
    /// The WIT package or the module could not be turned into a component.
    #[error("building {name}: {message}")]
    Component {
        /// The plugin's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a build puts its result and its intermediate files.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory the component is written to, as `<name>.wasm` with `-`
    /// turned into `_`.
    pub out_dir: PathBuf,
    /// Scratch directory for generated bindings, helpers and (Rust) cargo's
    /// target directory; default `<project>/target`.
    pub work_dir: Option<PathBuf>,
}

impl BuildOptions {
    /// Writes the component to `out_dir`, scratch files under the project.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        BuildOptions {
            out_dir: out_dir.into(),
            work_dir: None,
        }
    }

    /// Puts scratch files (and cargo's target directory) under `work_dir`.
    pub fn work_dir(mut self, work_dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(work_dir.into());
        self
    }
}

/// A plugin project: a directory and its manifest.
#[derive(Debug, Clone)]
pub struct Project {
    dir: PathBuf,
    manifest: Manifest,
}

impl Project {
    /// Reads `dir/weir-plugin.toml`, or for a Rust crate without one its
    /// `Cargo.toml`.
    pub fn open(dir: &Path) -> Result<Project, Error> {
        let dir = dir.canonicalize().map_err(|source| Error::Project {
            dir: dir.to_path_buf(),
            message: format!("cannot open the directory: {source}"),
        })?;
        let manifest = Manifest::load(&dir)?;
        Ok(Project { dir, manifest })
    }

    /// The project directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The project's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// File name of the built component: the plugin name with `-` as `_`.
    pub fn artifact_name(&self) -> String {
        format!("{}.wasm", self.manifest.name.replace('-', "_"))
    }

    /// The WIT package directory the plugin is built against.
    pub fn wit_dir(&self) -> PathBuf {
        self.dir.join(&self.manifest.wit)
    }

    /// Builds the plugin and returns the path of the component.
    pub fn build(&self, options: &BuildOptions) -> Result<PathBuf, Error> {
        std::fs::create_dir_all(&options.out_dir).map_err(Error::io(&options.out_dir))?;
        // Absolute: some toolchains run in another working directory.
        let out_dir = options
            .out_dir
            .canonicalize()
            .map_err(Error::io(&options.out_dir))?;
        let out = out_dir.join(self.artifact_name());
        let work = options
            .work_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("target"));
        std::fs::create_dir_all(&work).map_err(Error::io(&work))?;
        match self.manifest.language {
            Language::Rust => rust::build(self, &work, &out)?,
            Language::Python => python::build(self, &work, &out)?,
            Language::JavaScript => javascript::build(self, &work, &out)?,
            Language::C => c::build(self, &work, &out)?,
        }
        if !out.is_file() {
            return Err(Error::Component {
                name: self.manifest.name.clone(),
                message: format!("the toolchain succeeded but wrote no {}", out.display()),
            });
        }
        Ok(out)
    }
}

/// Runs `cmd`, turning a failure to start or a non-zero exit into an error.
fn run(name: &str, cmd: &mut Command, not_found: impl FnOnce() -> Error) -> Result<Output, Error> {
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => {
            return Err(Error::BuildFailed {
                name: name.to_string(),
                command: describe(cmd),
                output: e.to_string(),
            });
        }
    };
    if !output.status.success() {
        return Err(Error::BuildFailed {
            name: name.to_string(),
            command: describe(cmd),
            output: match (output.stdout.is_empty(), output.stderr.is_empty()) {
                // A command whose stderr went straight to the terminal.
                (true, true) => "(its messages are above)".into(),
                _ => format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            },
        });
    }
    Ok(output)
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// The first of `candidates` that is an executable file, or the first name
/// found on `PATH`.
fn find_tool(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for candidate in candidates {
        if candidate.components().count() == 1 {
            if let Some(found) = std::env::split_paths(&path)
                .map(|dir| dir.join(&candidate))
                .find(|p| p.is_file())
            {
                return Some(found);
            }
        } else if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Language::Rust => "Rust",
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
            Language::C => "C",
        })
    }
}
