//! C plugins: bindings from `wit-bindgen c` and the component from
//! `wit-component`, both run in-process (nothing to install but a C compiler
//! for wasm32-wasi); clang builds a WASI preview 1 reactor module that the
//! reactor adapter turns into a preview 2 component.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_parser::Resolve;

use crate::{Error, Language, Project};

/// The C batch helper (`sdk/c/weir_batch.h`), on every C plugin's include path.
const WEIR_BATCH_H: &str = include_str!("../../sdk/c/weir_batch.h");

const INSTALL: &str = "wasi-sdk (https://github.com/WebAssembly/wasi-sdk) with WASI_SDK_PATH \
     set to it, or on Debian/Ubuntu `apt-get install clang-16 lld-16 libclang-rt-16-dev-wasm32 \
     wasi-libc` (or set WEIR_WASI_CC to a clang that targets wasm32-wasi)";

/// A clang for wasm32-wasi and the flags it needs.
struct Compiler {
    clang: PathBuf,
    flags: Vec<String>,
}

fn missing(what: String) -> Error {
    Error::ToolchainMissing {
        language: Language::C,
        missing: what,
        install: INSTALL.into(),
    }
}

fn compiler() -> Result<Compiler, Error> {
    if let Some(cc) = env::var_os("WEIR_WASI_CC") {
        return Ok(Compiler {
            clang: cc.into(),
            flags: Vec::new(),
        });
    }
    if let Some(sdk) = env::var_os("WASI_SDK_PATH").map(PathBuf::from) {
        let clang = sdk.join("bin/clang");
        if !clang.is_file() {
            return Err(missing(format!(
                "WASI_SDK_PATH is set but {} is missing",
                clang.display()
            )));
        }
        let sysroot = sdk.join("share/wasi-sysroot");
        return Ok(Compiler {
            clang,
            flags: vec![format!("--sysroot={}", sysroot.display())],
        });
    }
    // Debian's clang-N finds wasi-libc's sysroot by itself; it also needs
    // lld's wasm-ld-N and the wasm32 compiler runtime of the same version.
    let mut partial = None;
    for version in (14..=22).rev() {
        let clang = PathBuf::from(format!("/usr/bin/clang-{version}"));
        if !clang.is_file() {
            continue;
        }
        let needs = [
            (
                format!("/usr/bin/wasm-ld-{version}"),
                format!("lld-{version}"),
            ),
            (
                format!(
                    "/usr/lib/llvm-{version}/lib/clang/{version}/lib/wasi/libclang_rt.builtins-wasm32.a"
                ),
                format!("libclang-rt-{version}-dev-wasm32"),
            ),
            ("/usr/lib/wasm32-wasi/libc.a".into(), "wasi-libc".into()),
        ];
        let absent: Vec<String> = needs
            .iter()
            .filter(|(path, _)| !Path::new(path).exists())
            .map(|(path, package)| format!("{path} (Debian package {package})"))
            .collect();
        if absent.is_empty() {
            return Ok(Compiler {
                clang,
                flags: Vec::new(),
            });
        }
        partial.get_or_insert(format!(
            "{} is installed but {} missing",
            clang.display(),
            absent.join(" and ")
        ));
    }
    Err(missing(partial.unwrap_or_else(|| {
        "no wasi-sdk (WASI_SDK_PATH) and no clang-N with wasm32-wasi support".into()
    })))
}

fn component_error(project: &Project, message: String) -> Error {
    Error::Component {
        name: project.manifest().name.clone(),
        message,
    }
}

/// Writes the C bindings of the project's world into `dir`; returns the
/// generated files' paths (sources and the type-information object).
fn generate_bindings(project: &Project, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let wit = project.wit_dir();
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_dir(&wit)
        .map_err(|e| component_error(project, format!("WIT {}: {e:#}", wit.display())))?;
    let world = resolve
        .select_world(&[package], Some(&project.manifest().world))
        .map_err(|e| component_error(project, format!("{e:#}")))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .map_err(|e| component_error(project, format!("C bindings: {e:#}")))?;
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let mut linked = Vec::new();
    for (name, contents) in files.iter() {
        let path = dir.join(name);
        std::fs::write(&path, contents).map_err(Error::io(&path))?;
        if name.ends_with(".c") || name.ends_with(".o") {
            linked.push(path);
        }
    }
    let helper = dir.join("weir_batch.h");
    std::fs::write(&helper, WEIR_BATCH_H).map_err(Error::io(&helper))?;
    Ok(linked)
}

fn sources(project: &Project) -> Result<Vec<PathBuf>, Error> {
    let listed = &project.manifest().sources;
    if !listed.is_empty() {
        return Ok(listed.iter().map(|s| project.dir().join(s)).collect());
    }
    let dir = project.dir();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::Project {
            dir: dir.to_path_buf(),
            message: "no *.c files (or `sources` in weir-plugin.toml)".into(),
        });
    }
    Ok(found)
}

pub(crate) fn build(project: &Project, work: &Path, out: &Path) -> Result<(), Error> {
    let name = &project.manifest().name;
    let compiler = compiler()?;
    let bindings = work.join("c-bindings");
    let generated = generate_bindings(project, &bindings)?;
    let module = work.join(format!("{}.core.wasm", name.replace('-', "_")));
    let mut cmd = Command::new(&compiler.clang);
    cmd.args(&compiler.flags)
        .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2"])
        .args(["-Wall", "-Wextra", "-Wno-unused-parameter"])
        .arg("-I")
        .arg(&bindings)
        .args(sources(project)?)
        .args(&generated)
        .arg("-o")
        .arg(&module);
    crate::run(name, &mut cmd, || {
        missing(format!("{} could not be started", compiler.clang.display()))
    })?;
    let core = std::fs::read(&module).map_err(Error::io(&module))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|encoder| {
            encoder.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.validate(true).encode())
        .map_err(|e| component_error(project, format!("making the component: {e:#}")))?;
    std::fs::write(out, component).map_err(Error::io(out))?;
    Ok(())
}
