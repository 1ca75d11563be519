//! JavaScript plugins: componentize-js, granting no WASI feature beyond what
//! the host links (`-d` disables the rest).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Language, Project};

/// The componentize-js release Weir is tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

fn install() -> String {
    format!(
        "Node.js (>= 18) and `npm install @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}` \
         in the project (or set WEIR_COMPONENTIZE_JS to its node_modules/.bin/componentize-js)"
    )
}

fn componentize_js(project: &Project) -> Result<PathBuf, Error> {
    let mut candidates = Vec::new();
    if let Some(explicit) = env::var_os("WEIR_COMPONENTIZE_JS") {
        candidates.push(PathBuf::from(explicit));
    }
    candidates.push(project.dir().join("node_modules/.bin/componentize-js"));
    if let Some(tools) = env::var_os("WEIR_JS_TOOLS") {
        candidates.push(PathBuf::from(tools).join("node_modules/.bin/componentize-js"));
    }
    candidates.push("componentize-js".into());
    let tool = crate::find_tool(candidates).ok_or_else(|| Error::ToolchainMissing {
        language: Language::JavaScript,
        missing: "componentize-js is not in the project's node_modules, WEIR_COMPONENTIZE_JS, \
                  WEIR_JS_TOOLS or on PATH"
            .into(),
        install: install(),
    })?;
    if crate::find_tool(["node".into()]).is_none() {
        return Err(Error::ToolchainMissing {
            language: Language::JavaScript,
            missing: "node is not on PATH".into(),
            install: install(),
        });
    }
    Ok(tool)
}

/// The deepest directory holding both paths.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.ancestors()
        .find(|dir| b.starts_with(dir))
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

pub(crate) fn build(project: &Project, _work: &Path, out: &Path) -> Result<(), Error> {
    let manifest = project.manifest();
    let tool = componentize_js(project)?;
    let wit = project
        .wit_dir()
        .canonicalize()
        .map_err(Error::io(&project.wit_dir()))?;
    let entry = project
        .dir()
        .join(manifest.entry.as_deref().unwrap_or("app.js"));
    // componentize-js wants the WIT directory under its working directory.
    let cwd = common_ancestor(project.dir(), &wit);
    let relative = |p: &Path| p.strip_prefix(&cwd).unwrap_or(p).to_path_buf();
    let mut cmd = Command::new(&tool);
    cmd.current_dir(&cwd)
        .arg("--wit")
        .arg(relative(&wit))
        .arg("-n")
        .arg(&manifest.world)
        .args(["-d", "stdio", "random", "clocks", "http", "fetch-event"])
        .arg("-o")
        .arg(out)
        .arg(relative(&entry));
    crate::run(&manifest.name, &mut cmd, || Error::ToolchainMissing {
        language: Language::JavaScript,
        missing: format!("{} could not be started", tool.display()),
        install: install(),
    })?;
    Ok(())
}
