//! Python plugins: componentize-py, with the pure-Python batch helper
//! (`sdk/python/weir_batch.py`, shipped inside this crate) on the path.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Language, Project};

/// The componentize-py release Weir is tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The batch helper every Python plugin may `import weir_batch`.
const WEIR_BATCH_PY: &str = include_str!("../../sdk/python/weir_batch.py");

fn componentize_py() -> Result<PathBuf, Error> {
    let mut candidates = Vec::new();
    if let Some(explicit) = env::var_os("WEIR_COMPONENTIZE_PY") {
        candidates.push(PathBuf::from(explicit));
    }
    if let Some(venv) = env::var_os("WEIR_TEST_VENV").or_else(|| env::var_os("VIRTUAL_ENV")) {
        candidates.push(PathBuf::from(venv).join("bin/componentize-py"));
    }
    candidates.push("componentize-py".into());
    crate::find_tool(candidates).ok_or_else(|| Error::ToolchainMissing {
        language: Language::Python,
        missing: "componentize-py is not on PATH (nor in WEIR_COMPONENTIZE_PY, WEIR_TEST_VENV \
                  or VIRTUAL_ENV)"
            .into(),
        install: format!(
            "`pip install componentize-py=={COMPONENTIZE_PY_VERSION}` (in a virtualenv: activate \
             it, or set WEIR_COMPONENTIZE_PY to its bin/componentize-py)"
        ),
    })
}

pub(crate) fn build(project: &Project, work: &Path, out: &Path) -> Result<(), Error> {
    let manifest = project.manifest();
    let tool = componentize_py()?;
    let helper_dir = work.join("python-sdk");
    std::fs::create_dir_all(&helper_dir).map_err(Error::io(&helper_dir))?;
    let helper = helper_dir.join("weir_batch.py");
    std::fs::write(&helper, WEIR_BATCH_PY).map_err(Error::io(&helper))?;
    let mut cmd = Command::new(&tool);
    cmd.arg("-d")
        .arg(project.wit_dir())
        .arg("-w")
        .arg(&manifest.world)
        // The plugin gets only the host's own imports; WASI calls trap.
        .args(["componentize", "--stub-wasi"])
        .arg("-p")
        .arg(project.dir())
        .arg("-p")
        .arg(&helper_dir)
        .arg(manifest.entry.as_deref().unwrap_or("app"))
        .arg("-o")
        .arg(out)
        // Keep __pycache__ out of the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    crate::run(&manifest.name, &mut cmd, || Error::ToolchainMissing {
        language: Language::Python,
        missing: format!("{} could not be started", tool.display()),
        install: format!("`pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"),
    })?;
    Ok(())
}
