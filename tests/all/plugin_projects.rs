//! `weir new plugin` and `weir plugin build`: a new project in each language
//! builds as created, and the component runs; a missing toolchain is named
//! with what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use std::sync::Arc;

use crate::common::{assert_exit, assert_ok, weir};

/// Rust projects build in the plugins' own cargo target directory, so the
/// SDK and arrow are compiled once, not per test run.
fn plugin_target_dir() -> PathBuf {
    Path::new(weir_fixtures::PLUGIN_DIR)
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

fn build(dir: &Path) -> Command {
    let mut cmd = weir();
    cmd.args(["plugin", "build"])
        .arg(dir)
        .env("CARGO_TARGET_DIR", plugin_target_dir());
    cmd
}

fn batch() -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        (
            "name",
            Arc::new(StringArray::from(vec![Some("Zoë"), None, Some("東京")])) as ArrayRef,
        ),
        (
            "amount",
            Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.0)])) as ArrayRef,
        ),
    ])
    .unwrap()
}

#[test]
fn a_new_plugin_in_each_language_builds_as_created_and_runs() {
    let root = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js", "c"] {
        let name = format!("hello-{lang}");
        let dir = root.path().join(&name);
        let out = weir()
            .args(["new", "plugin", &name, "--lang", lang, "--dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert_ok(&out);
        assert!(dir.join("weir-plugin.toml").is_file(), "{lang}");

        let out = build(&dir).output().unwrap();
        let err = assert_ok(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("world: weir:plugin transform-plugin")
                && text.contains("ok: this host can run it"),
            "{lang}: {text}\n{err}"
        );
        let wasm = dir.join(format!("target/wasm/hello_{lang}.wasm"));
        assert!(wasm.is_file(), "{lang}: {err}");

        // The template passes batches through and counts rows on the host.
        let engine = weir::PluginEngine::with_cache(None).unwrap();
        let mut plugin = engine
            .load_transform("hello", &wasm)
            .unwrap()
            .instantiate("{}", Default::default())
            .unwrap();
        let input = batch();
        let output = plugin.process(&input).unwrap();
        assert_eq!(output, vec![input.clone()], "{lang}");
        plugin.process(&input).unwrap();
        assert_eq!(plugin.counters().get("rows"), Some(&6), "{lang}");
    }
}

#[test]
fn new_plugin_refuses_bad_names_and_non_empty_directories() {
    let root = tempfile::tempdir().unwrap();
    let out = weir()
        .args(["new", "plugin", "Bad Name", "--lang", "c", "--dir"])
        .arg(root.path().join("x"))
        .output()
        .unwrap();
    let err = assert_exit(&out, 1);
    assert!(err.contains("`Bad Name` is not a plugin name"), "{err}");

    std::fs::write(root.path().join("keep.txt"), "mine").unwrap();
    let out = weir()
        .args(["new", "plugin", "ok", "--lang", "python", "--dir"])
        .arg(root.path())
        .output()
        .unwrap();
    let err = assert_exit(&out, 1);
    assert!(err.contains("exists and is not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("keep.txt")).unwrap(),
        "mine"
    );

    let out = weir()
        .args(["new", "plugin", "ok", "--lang", "cobol"])
        .output()
        .unwrap();
    let err = assert_exit(&out, 2);
    assert!(err.contains("expected rust, python, js or c"), "{err}");
}

#[test]
fn a_missing_toolchain_is_named_with_what_to_install() {
    let root = tempfile::tempdir().unwrap();
    let cases = [
        (
            "python",
            vec![("PATH", "/nonexistent"), ("WEIR_TEST_VENV", "/nonexistent")],
            "pip install componentize-py==0.25.1",
        ),
        (
            "js",
            vec![("PATH", "/nonexistent"), ("WEIR_JS_TOOLS", "/nonexistent")],
            "npm install @bytecodealliance/componentize-js@0.23.0",
        ),
        (
            "c",
            vec![("WASI_SDK_PATH", "/nonexistent")],
            "WASI_SDK_PATH is set but /nonexistent/bin/clang is missing",
        ),
    ];
    for (lang, env, expected) in cases {
        let dir = root.path().join(lang);
        assert_ok(
            &weir()
                .args(["new", "plugin", "p", "--lang", lang, "--dir"])
                .arg(&dir)
                .output()
                .unwrap(),
        );
        let mut cmd = build(&dir);
        cmd.env_remove("VIRTUAL_ENV")
            .env_remove("WEIR_COMPONENTIZE_PY");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let err = assert_exit(&cmd.output().unwrap(), 1);
        assert!(
            err.contains(&format!("no {} toolchain", display(lang))) && err.contains(expected),
            "{lang}: {err}"
        );
        assert!(err.contains("fix: "), "{lang}: {err}");
    }
}

fn display(lang: &str) -> &str {
    match lang {
        "python" => "Python",
        "js" => "JavaScript",
        _ => "C",
    }
}

/// `weir validate` with `plugin` as the transform of a small pipeline.
fn validate_as_transform(dir: &Path, plugin: &Path) -> String {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let pipeline = dir.join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"q\"\ncheckpoint = \"ck\"\n\n[source]\nkind = \"file\"\npath = \"in\"\n\
             format = \"json\"\nschema = [ {{ name = \"id\", type = \"long\" }} ]\n\n\
             [[transform]]\nname = \"t\"\nplugin = \"{}\"\n\n[sink]\nkind = \"console\"\n",
            plugin.display()
        ),
    )
    .unwrap();
    let out = weir().arg("validate").arg(&pipeline).output().unwrap();
    assert_exit(&out, 1)
}

#[test]
fn validate_names_the_world_a_component_has_or_the_export_it_lacks() {
    let root = tempfile::tempdir().unwrap();
    // A stateful function where a transform goes.
    let err = validate_as_transform(root.path(), Path::new(weir_fixtures::SESSIONIZE));
    assert!(
        err.contains("it is a `stateful-plugin` component, not a `transform-plugin` one"),
        "{err}"
    );
    // A component of the host-imports-only world: it exports nothing.
    let dir = root.path().join("hostonly");
    let out = weir()
        .args(["new", "plugin", "hostonly", "--lang", "c", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_ok(&out);
    std::fs::remove_file(dir.join("plugin.c")).unwrap();
    std::fs::write(
        dir.join("plugin.c"),
        "#include \"plugin_host.h\"\nint unused_marker;\n",
    )
    .unwrap();
    let manifest = std::fs::read_to_string(dir.join("weir-plugin.toml")).unwrap();
    std::fs::write(
        dir.join("weir-plugin.toml"),
        manifest.replace("transform-plugin", "plugin-host"),
    )
    .unwrap();
    // It builds, but `weir plugin build` says no host can run it as a plugin.
    let err = assert_exit(&build(&dir).output().unwrap(), 1);
    assert!(err.contains("it exports none of"), "{err}");
    let err = validate_as_transform(root.path(), &dir.join("target/wasm/hostonly.wasm"));
    assert!(
        err.contains("no exported instance named `weir:plugin/transform@0.1.1`")
            && err.contains("this component exports nothing"),
        "{err}"
    );
}
