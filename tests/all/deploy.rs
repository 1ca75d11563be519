//! The deployment examples in `deploy/`: the Kubernetes manifests pass
//! Kubernetes' own JSON schemas (strictly: an unknown field is an error),
//! and the pipeline they ship is one `weir` accepts.

use std::path::{Path, PathBuf};

use weir::Pipeline;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn venv_bin(name: &str) -> PathBuf {
    let venv = std::env::var_os("WEIR_TEST_VENV")
        .expect("WEIR_TEST_VENV is unset: run `./dev test`, which installs kubernetes-validate");
    Path::new(&venv).join("bin").join(name)
}

#[test]
fn the_kubernetes_manifests_pass_the_kubernetes_schemas() {
    let dir = deploy_dir().join("kubernetes");
    let manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(!manifests.is_empty(), "no manifests in {}", dir.display());
    let out = std::process::Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(&manifests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kubernetes_example_ships_a_valid_replicated_pipeline() {
    let manifest = deploy_dir().join("kubernetes/weir-replicas.yaml");
    let out = std::process::Command::new(venv_bin("python"))
        .args([
            "-c",
            "import sys, yaml\n\
             for doc in yaml.safe_load_all(open(sys.argv[1])):\n\
             \x20   if doc['kind'] == 'ConfigMap':\n\
             \x20       sys.stdout.write(doc['data']['pipeline.toml'])",
        ])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The image keeps the plugins in /plugins; the tests' are built here.
    let text = String::from_utf8(out.stdout)
        .unwrap()
        .replace("\"/plugins/", &format!("\"{}/", weir_fixtures::PLUGIN_DIR));
    let pipeline = Pipeline::parse(&text, "weir-replicas.yaml", Path::new("/etc/weir"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cluster = pipeline.cluster.expect("the example declares [cluster]");
    assert_eq!(cluster.group_id, "orders-replicas");
}

#[test]
fn the_systemd_unit_runs_a_replica_named_by_its_instance() {
    let unit = std::fs::read_to_string(deploy_dir().join("systemd/weir-replica@.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(&args[1..3], ["run", "/etc/weir/pipeline.toml"]);
    let replica = args
        .iter()
        .position(|a| *a == "--replica")
        .expect("--replica");
    assert_eq!(args[replica + 1], "%i");
    // The flags are ones `weir run` takes.
    let help = crate::common::weir()
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "`weir run` has no {flag}:\n{help}");
    }
}
