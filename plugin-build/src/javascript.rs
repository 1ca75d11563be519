//! JavaScript plugins: the entry is bundled with esbuild — with npm packages
//! such as apache-arrow and Weir's `weir-arrow` helper (`sdk/js`) — then made
//! a component by componentize-js, granting no WASI feature beyond what the
//! host links (`-d` disables the rest).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Language, Project};

/// The componentize-js release Weir is tested with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";
/// The esbuild release Weir bundles with.
pub const ESBUILD_VERSION: &str = "0.28.2";
/// The apache-arrow release `weir-arrow` is tested with.
pub const APACHE_ARROW_VERSION: &str = "21.2.0";

/// `weir-arrow`: WIT batches as apache-arrow vectors.
const WEIR_ARROW_JS: &str = include_str!("../../sdk/js/weir_arrow.js");

fn install() -> String {
    format!(
        "Node.js (>= 18) and `npm install @bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION} \
         @bytecodealliance/preview2-shim@0.17.8 esbuild@{ESBUILD_VERSION} \
         apache-arrow@{APACHE_ARROW_VERSION}` in the project (or set WEIR_COMPONENTIZE_JS and \
         WEIR_ESBUILD to the tools)"
    )
}

/// A tool from npm: `explicit` variable, the project's node_modules,
/// WEIR_JS_TOOLS, then PATH.
fn npm_tool(project: &Project, explicit: &str, name: &str) -> Result<PathBuf, Error> {
    let mut candidates = Vec::new();
    if let Some(path) = env::var_os(explicit) {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(project.dir().join("node_modules/.bin").join(name));
    if let Some(tools) = env::var_os("WEIR_JS_TOOLS") {
        candidates.push(PathBuf::from(tools).join("node_modules/.bin").join(name));
    }
    candidates.push(name.into());
    crate::find_tool(candidates).ok_or_else(|| Error::ToolchainMissing {
        language: Language::JavaScript,
        missing: format!(
            "{name} is not in the project's node_modules, {explicit}, WEIR_JS_TOOLS or on PATH"
        ),
        install: install(),
    })
}

fn componentize_js(project: &Project) -> Result<PathBuf, Error> {
    let tool = npm_tool(project, "WEIR_COMPONENTIZE_JS", "componentize-js")?;
    if crate::find_tool(["node".into()]).is_none() {
        return Err(Error::ToolchainMissing {
            language: Language::JavaScript,
            missing: "node is not on PATH".into(),
            install: install(),
        });
    }
    Ok(tool)
}

/// Bundles the entry and what it imports from npm (and `weir-arrow`) into
/// one ES module; WIT imports (`weir:plugin/...`) stay imports.
fn bundle(project: &Project, entry: &Path, work: &Path) -> Result<PathBuf, Error> {
    let esbuild = npm_tool(project, "WEIR_ESBUILD", "esbuild")?;
    let helper_modules = work.join("js-sdk/node_modules");
    let helper = helper_modules.join("weir-arrow");
    std::fs::create_dir_all(&helper).map_err(Error::io(&helper))?;
    let index = helper.join("index.js");
    std::fs::write(&index, WEIR_ARROW_JS).map_err(Error::io(&index))?;
    let mut module_dirs = vec![helper_modules, project.dir().join("node_modules")];
    if let Some(tools) = env::var_os("WEIR_JS_TOOLS") {
        module_dirs.push(PathBuf::from(tools).join("node_modules"));
    }
    let node_path = env::join_paths(&module_dirs).map_err(|e| Error::Project {
        dir: project.dir().to_path_buf(),
        message: format!("module directories: {e}"),
    })?;
    let out = work.join("bundle.js");
    let mut cmd = Command::new(&esbuild);
    cmd.arg(entry)
        .args(["--bundle", "--format=esm", "--platform=neutral"])
        .args([
            "--main-fields=module,main",
            "--external:weir:*",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", out.display()))
        .env("NODE_PATH", node_path);
    crate::run(&project.manifest().name, &mut cmd, || {
        Error::ToolchainMissing {
            language: Language::JavaScript,
            missing: format!("{} could not be started", esbuild.display()),
            install: install(),
        }
    })?;
    Ok(out)
}

/// The deepest directory holding both paths.
fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.ancestors()
        .find(|dir| b.starts_with(dir))
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

pub(crate) fn build(project: &Project, work: &Path, out: &Path) -> Result<(), Error> {
    let manifest = project.manifest();
    let tool = componentize_js(project)?;
    let wit = project
        .wit_dir()
        .canonicalize()
        .map_err(Error::io(&project.wit_dir()))?;
    let entry = project
        .dir()
        .join(manifest.entry.as_deref().unwrap_or("app.js"));
    let bundled = bundle(project, &entry, work)?;
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
        .arg(&bundled);
    crate::run(&manifest.name, &mut cmd, || Error::ToolchainMissing {
        language: Language::JavaScript,
        missing: format!("{} could not be started", tool.display()),
        install: install(),
    })?;
    Ok(())
}
