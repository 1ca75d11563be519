//! `weir-plugin.toml`: what a plugin project is and how to build it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "weir-plugin.toml";

/// A plugin's source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// A cargo crate using `weir-sdk`.
    Rust,
    /// A Python module, built with componentize-py.
    Python,
    /// A JavaScript module, built with componentize-js.
    #[serde(rename = "js", alias = "javascript")]
    JavaScript,
    /// C sources, built with clang for wasm32-wasi.
    C,
}

impl Language {
    /// Every language, in the order the docs list them.
    pub const ALL: [Language; 4] = [
        Language::Rust,
        Language::Python,
        Language::JavaScript,
        Language::C,
    ];

    /// The name used in manifests and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "js",
            Language::C => "c",
        }
    }
}

/// The contents of `weir-plugin.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name; the component is `<name>.wasm` (`-` as `_`).
    pub name: String,
    /// The source language.
    pub language: Language,
    /// The WIT world the plugin implements.
    #[serde(default = "default_world")]
    pub world: String,
    /// The WIT package directory, relative to the project.
    #[serde(default = "default_wit")]
    pub wit: PathBuf,
    /// Python: the module defining the exports (default `app`).
    /// JavaScript: the entry file (default `app.js`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// C: the source files, relative to the project (default: every `*.c`
    /// in the project directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<PathBuf>,
}

fn default_world() -> String {
    "transform-plugin".into()
}

fn default_wit() -> PathBuf {
    "wit".into()
}

impl Manifest {
    /// A manifest with the defaults for `language`.
    pub fn new(name: &str, language: Language) -> Manifest {
        Manifest {
            name: name.to_string(),
            language,
            world: default_world(),
            wit: default_wit(),
            entry: None,
            sources: Vec::new(),
        }
    }

    /// Reads `dir/weir-plugin.toml`; a Rust crate may do without one.
    pub fn load(dir: &Path) -> Result<Manifest, Error> {
        let path = dir.join(MANIFEST_FILE);
        let project_error = |message: String| Error::Project {
            dir: dir.to_path_buf(),
            message,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| project_error(format!("{MANIFEST_FILE}: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cargo = dir.join("Cargo.toml");
                if cargo.is_file() {
                    Ok(Manifest::new(
                        &crate::rust::crate_name(dir)?,
                        Language::Rust,
                    ))
                } else {
                    Err(project_error(format!(
                        "no {MANIFEST_FILE} (or Cargo.toml) here; `weir new plugin NAME --lang \
                         rust|python|js|c` creates a project"
                    )))
                }
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// The manifest as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }
}
