//! `weir new plugin`: a buildable plugin project per language.

use std::path::{Path, PathBuf};

use crate::{Error, Language, Manifest};

/// The WIT package every plugin is built against, as this Weir has it.
/// One file per interface group, and the worlds (see `wit/worlds.wit`).
const WIT_FILES: &[(&str, &str)] = &[
    ("worlds.wit", include_str!("../../wit/worlds.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("host.wit", include_str!("../../wit/host.wit")),
    ("transform.wit", include_str!("../../wit/transform.wit")),
    ("stateful.wit", include_str!("../../wit/stateful.wit")),
    ("batch-sink.wit", include_str!("../../wit/batch-sink.wit")),
];

/// The repository's Rust SDK, when this Weir was built from a checkout.
const CHECKOUT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

fn templates(language: Language) -> &'static [(&'static str, &'static str)] {
    match language {
        Language::Rust => &[
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
        ],
        Language::Python => &[("app.py", include_str!("../templates/python/app.py"))],
        Language::JavaScript => &[("app.js", include_str!("../templates/js/app.js"))],
        Language::C => &[("plugin.c", include_str!("../templates/c/plugin.c"))],
    }
}

/// Creates the project `dir` for a transform plugin called `name`, written
/// in `language`; returns the files written. A Rust project depends on the
/// SDK at `sdk` (default: the checkout this Weir was built from).
pub fn new_plugin(
    dir: &Path,
    name: &str,
    language: Language,
    sdk: Option<&Path>,
) -> Result<Vec<PathBuf>, Error> {
    let project_error = |message: String| Error::Project {
        dir: dir.to_path_buf(),
        message,
    };
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        return Err(project_error(format!(
            "`{name}` is not a plugin name: use lowercase letters, digits, `-` and `_`, \
             starting with a letter"
        )));
    }
    if dir.exists() && dir.read_dir().map_err(Error::io(dir))?.next().is_some() {
        return Err(project_error(
            "the directory exists and is not empty; choose another".into(),
        ));
    }
    let sdk = match language {
        Language::Rust => {
            let sdk = sdk.unwrap_or(Path::new(CHECKOUT_SDK));
            let sdk = sdk.canonicalize().map_err(|_| {
                project_error(format!(
                    "the Rust SDK is not at {}; pass --sdk with the path of a Weir checkout's \
                     sdk/ directory",
                    sdk.display()
                ))
            })?;
            sdk.display().to_string()
        }
        _ => String::new(),
    };
    let mut manifest = Manifest::new(name, language);
    let artifact = format!("{}.wasm", name.replace('-', "_"));
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{artifact}}", &artifact)
            .replace("{{sdk}}", &sdk.replace('\\', "/"))
    };
    let mut files: Vec<(PathBuf, String)> = templates(language)
        .iter()
        .map(|(path, text)| (PathBuf::from(path), fill(text)))
        .collect();
    if language != Language::Rust {
        // The WIT travels with the project: the bindings are generated from it.
        for (file, text) in WIT_FILES {
            files.push((Path::new("wit").join(file), (*text).to_string()));
        }
    } else {
        // cargo-built: the SDK carries the WIT.
        manifest.wit = PathBuf::from(&sdk).join("../wit");
    }
    files.push((crate::MANIFEST_FILE.into(), manifest.to_toml()));
    files.push((".gitignore".into(), "/target\n/node_modules\n".into()));
    files.push((
        "README.md".into(),
        format!(
            "# {name}\n\nA Weir transform plugin in {language}.\n\n```sh\nweir plugin build        \
             # writes target/wasm/{artifact}\nweir plugin inspect target/wasm/{artifact}\n```\n\n\
             Use it in a pipeline:\n\n```toml\n[[transform]]\nname = \"{name}\"\nplugin = \
             \"target/wasm/{artifact}\"\nconfig = {{}}\n```\n"
        ),
    ));
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        std::fs::write(&path, text).map_err(Error::io(&path))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod wit_files {
    /// A new file in `wit/` must travel with new plugin projects too.
    #[test]
    fn every_wit_file_is_scaffolded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".wit"))
            .collect();
        on_disk.sort();
        let mut scaffolded: Vec<String> = super::WIT_FILES
            .iter()
            .map(|(name, _)| name.to_string())
            .collect();
        scaffolded.sort();
        assert_eq!(on_disk, scaffolded);
    }
}
