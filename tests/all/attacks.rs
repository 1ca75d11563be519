//! Attacks on a multi-tenant `weir serve`, tried as a hostile tenant
//! ("eve") and as strangers while another tenant ("bob") streams. Each
//! attack must fail with a clear error and show nothing of the host or of
//! bob; at the end bob's query still runs and has every row exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::free_port;
use crate::serve::{Server, wait_until};

/// A secret in the host's environment and in a host file.
const SECRET: &str = "host-secret-4f1d";
/// A password inside bob's database connection, which only the operator knows.
const DB_PASSWORD: &str = "bob-db-password-77";
/// Bob's rows carry this in their names: no answer to eve may contain it.
const BOB_MARK: &str = "bob-private";

/// One HTTP/1.1 request; (status, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (key, value) in headers {
        head.push_str(&format!("{key}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413, 401) before reading a large body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Bob's input file `n`: ids `5n+1 ..= 5n+5`, names marked as bob's.
fn write_bob_input(dir: &Path, n: u64) {
    let rows: String = (5 * n + 1..=5 * n + 5)
        .map(|id| format!("{{\"id\": {id}, \"name\": \"{BOB_MARK}-{id}\", \"amount\": {id}.5}}\n"))
        .collect();
    let tmp = dir.join(format!(".f-{n:04}.json"));
    std::fs::write(&tmp, rows).unwrap();
    std::fs::rename(&tmp, dir.join(format!("f-{n:04}.json"))).unwrap();
}

const SCHEMA: &str = r#"schema = [
  { name = "id", type = "long", nullable = false },
  { name = "name", type = "string" },
  { name = "amount", type = "double" },
]"#;

/// A valid pipeline of eve's; the attacks mutate it.
fn eve_pipeline(name: &str, plugin: &str) -> String {
    format!(
        r#"name = "{name}"
checkpoint = "ck"

[trigger]
processing_time = "100ms"

[source]
kind = "file"
path = "connection:eve-landing/in"
format = "json"
{SCHEMA}

[[transform]]
name = "double"
plugin = "{plugin}"
config = {{ input = "amount", output = "amount_x2", multiply = 2.0 }}

[sink]
kind = "json"
path = "out"
"#
    )
}

/// The ids of the JSON sink's committed rows at `out`.
pub(crate) fn committed_ids(out: &Path) -> Vec<i64> {
    crate::serve::rows_by_batch(out)
        .into_iter()
        .flat_map(|(_, rows)| rows)
        .map(|row| row["id"].as_i64().unwrap())
        .collect()
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_hostile_tenant_cannot_reach_the_host_or_another_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    let (bob_in, eve_in) = (root.join("bob-in"), root.join("eve-in"));
    std::fs::create_dir_all(&bob_in).unwrap();
    std::fs::create_dir_all(eve_in.join("in")).unwrap();
    std::fs::write(root.join("secret.txt"), SECRET).unwrap();
    // A link an operator left in eve's landing directory, to bob's.
    std::os::unix::fs::symlink(&bob_in, eve_in.join("to-bob")).unwrap();
    let access = root.join("access.toml");
    std::fs::write(
        &access,
        format!(
            r#"
[tenants.bob]
connections = ["bob-landing", "bob-db"]

[tenants.eve]
connections = ["eve-landing"]
max_queries = 3
max_plugins = 3
max_plugin_size = "8MiB"
max_plugin_memory = "256MiB"
max_plugin_timeout = "2s"

[connections.bob-landing]
kind = "directory"
path = "{bob}"

[connections.eve-landing]
kind = "directory"
path = "{eve}"

[connections.bob-db]
kind = "postgres"
url = "postgresql://bob:{DB_PASSWORD}@127.0.0.1:1/bob"
"#,
            bob = bob_in.display(),
            eve = eve_in.display(),
        ),
    )
    .unwrap();
    let port = free_port();
    let server = Server::start_with(
        &state,
        port,
        &root.join("serve.log"),
        &[("WEIR_TEST_SECRET", SECRET)],
        &["--access", access.to_str().unwrap()],
    );

    // Bob streams: a new file every 100 ms while eve attacks.
    let bob_pipeline = root.join("bob.toml");
    std::fs::write(
        &bob_pipeline,
        crate::serve::pipeline_text(&bob_in).replace(
            &format!("path = \"{}\"", bob_in.display()),
            "path = \"connection:bob-landing\"",
        ),
    )
    .unwrap();
    server.cli_as("bob", &["submit", bob_pipeline.to_str().unwrap()]);
    let bob_query = state.join("tenants/bob/orders");
    let mut bob_files = 0u64;
    let mut feed_bob = || {
        write_bob_input(&bob_in, bob_files);
        bob_files += 1;
    };
    feed_bob();
    wait_until("bob's first batch", || {
        !crate::common::numbered_entries(&bob_query.join("ck/commits")).is_empty()
    });

    let eve = server.token("eve");
    let bob = server.token("bob");
    let eve_auth = format!("Bearer {eve}");
    let as_eve = |method: &str, path: &str, content_type: &str, body: &[u8]| {
        request(
            port,
            method,
            path,
            &[("Authorization", &eve_auth), ("Content-Type", content_type)],
            body,
        )
    };
    let upload = |token: &str, wasm: &[u8]| {
        let auth = format!("Bearer {token}");
        let (status, body) = request(
            port,
            "PUT",
            "/plugins",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/wasm"),
            ],
            wasm,
        );
        assert_eq!(status, 201, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["plugin"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let enrich = std::fs::read(weir_fixtures::ENRICH).unwrap();
    let eve_enrich = upload(&eve, &enrich);
    let eve_adversary = upload(&eve, &std::fs::read(weir_fixtures::ADVERSARY).unwrap());
    let eve_cdc = upload(&eve, &std::fs::read(weir_fixtures::CDC_UPSERT).unwrap());
    let bob_only = upload(&bob, &std::fs::read(weir_fixtures::TESTKIT).unwrap());
    let submit = |text: &str| as_eve("POST", "/queries", "application/toml", text.as_bytes());
    let base = eve_pipeline("probe", &eve_enrich);

    let mut answers: Vec<(String, String)> = Vec::new();
    let mut check = |case: &str, (status, body): (u16, String), want: u16, phrase: &str| {
        assert_eq!(status, want, "{case}: {body}");
        assert!(
            body.contains(phrase),
            "{case}: the answer does not say {phrase:?}: {body}"
        );
        answers.push((case.to_string(), body));
    };

    // -- Identity: the token says who calls, nothing else does.
    check(
        "no token",
        request(port, "GET", "/queries", &[], b""),
        401,
        "Authorization: Bearer",
    );
    check(
        "a made-up token",
        request(
            port,
            "GET",
            "/queries",
            &[("Authorization", "Bearer weir_guess")],
            b"",
        ),
        401,
        "unknown token",
    );
    check(
        "a token in the query string",
        request(port, "GET", &format!("/queries?token={eve}"), &[], b""),
        401,
        "Authorization",
    );
    let (status, body) = as_eve("GET", "/queries", "application/json", b"");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("bob"), "eve's list shows bob: {body}");
    check(
        "reading bob's query",
        as_eve("GET", "/queries/bob/orders", "application/json", b""),
        404,
        "no query bob/orders",
    );
    check(
        "stopping bob's query",
        as_eve("POST", "/queries/bob/orders/stop", "application/json", b""),
        404,
        "no query",
    );
    check(
        "restarting bob's query",
        as_eve("POST", "/queries/bob/orders/start", "application/json", b""),
        404,
        "no query",
    );
    let swap = format!(
        r#"{{"stage": "double", "plugin": "{eve_adversary}", "config": {{"mode": "panic"}}}}"#
    );
    check(
        "swapping bob's plugin",
        as_eve(
            "POST",
            "/queries/bob/orders/swap",
            "application/json",
            swap.as_bytes(),
        ),
        404,
        "no query",
    );
    check(
        "issuing herself an admin's power",
        as_eve("POST", "/tenants/bob/tokens", "application/json", b""),
        403,
        "only an admin",
    );
    check(
        "reading every tenant's metrics",
        as_eve("GET", "/metrics", "application/json", b""),
        403,
        "metrics are for admins",
    );
    check(
        "a cross-site form post from a web page",
        request(
            port,
            "POST",
            "/queries",
            &[
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
                ("Authorization", &eve_auth),
            ],
            base.as_bytes(),
        ),
        403,
        "cross-origin",
    );
    check(
        "a pipeline sent as text/plain",
        as_eve("POST", "/queries", "text/plain", base.as_bytes()),
        415,
        "application/toml",
    );
    check(
        "DNS rebinding (a foreign Host)",
        request(
            port,
            "GET",
            "/queries",
            &[("Host", "evil.example"), ("Authorization", &eve_auth)],
            b"",
        ),
        403,
        "Host header",
    );
    // `?tenant=bob` is ignored: the query is eve's.
    let claim = eve_pipeline("claim", &eve_enrich);
    let (status, body) = as_eve(
        "POST",
        "/queries?tenant=bob",
        "application/toml",
        claim.as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"id\":\"eve/claim\""), "{body}");
    assert!(!state.join("tenants/bob/claim").exists());

    // -- Confinement: the pipeline names nothing of the host.
    let secret_dir = root.display().to_string();
    let mutate = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replace(from, to)
    };
    let in_path = "path = \"connection:eve-landing/in\"";
    check(
        "an absolute source path",
        submit(&mutate(in_path, &format!("path = \"{secret_dir}\""))),
        400,
        "is an absolute path",
    );
    check(
        "`..` out of the query directory into bob's output",
        submit(&mutate("path = \"out\"", "path = \"../../bob/orders/out\"")),
        400,
        "leaves its directory",
    );
    check(
        "an absolute checkpoint in bob's query",
        submit(&mutate(
            "checkpoint = \"ck\"",
            &format!("checkpoint = \"{}\"", bob_query.join("ck").display()),
        )),
        400,
        "is an absolute path",
    );
    check(
        "a dead-letter path outside",
        submit(&mutate(
            in_path,
            &format!(
                "{in_path}\non_bad_record = \"dead_letter\"\ndead_letter_path = \"/tmp/eve-dl\""
            ),
        )),
        400,
        "is an absolute path",
    );
    check(
        "a file:// URL",
        submit(&mutate(in_path, "path = \"file:///etc\"")),
        400,
        "URLs are refused",
    );
    check(
        "the host's environment through ${VAR}",
        submit(&mutate(in_path, "path = \"in/${WEIR_TEST_SECRET}\"")),
        400,
        "is not expanded",
    );
    check(
        "a plugin by host path",
        submit(&mutate(&eve_enrich, weir_fixtures::ENRICH)),
        400,
        "by the digest of an upload",
    );
    check(
        "a plugin only bob uploaded",
        submit(&mutate(&eve_enrich, &bob_only)),
        400,
        "no plugin with this digest was uploaded by this tenant",
    );
    check(
        "bob's directory connection",
        submit(&mutate(in_path, "path = \"connection:bob-landing\"")),
        400,
        "no connection \\\"bob-landing\\\" is granted",
    );
    check(
        "`..` below a granted directory",
        submit(&mutate(
            in_path,
            "path = \"connection:eve-landing/../bob-in\"",
        )),
        400,
        "leaves its directory",
    );
    check(
        "a symbolic link in a granted directory",
        submit(&mutate(in_path, "path = \"connection:eve-landing/to-bob\"")),
        400,
        "symbolic link",
    );
    check(
        "S3 with her own endpoint and the host's credentials",
        submit(&format!(
            "{}\n[s3]\nendpoint = \"http://127.0.0.1:9\"\n",
            mutate("path = \"out\"", "path = \"s3://bucket/x\"")
        )),
        400,
        "cannot set `[s3]`",
    );
    check(
        "an s3:// location without a connection",
        submit(&mutate("path = \"out\"", "path = \"s3://any-bucket/x\"")),
        400,
        "URLs are refused",
    );
    let kafka_sink = "kind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\ntopic = \"t\"";
    check(
        "a Kafka cluster by address",
        submit(&mutate("kind = \"json\"\npath = \"out\"", kafka_sink)),
        400,
        "reaches kafka only through a connection",
    );
    let postgres_sink = format!(
        "kind = \"foreach_batch\"\nname = \"cdc\"\nplugin = \"{eve_cdc}\"\nconfig = {{ output = \"users\" }}\n\n\
         [sink.outputs.users]\nkind = \"postgres\"\nurl = \"connection:bob-db\"\ntable = \"users\"\nmode = \"append\""
    );
    check(
        "bob's database connection",
        submit(&mutate("kind = \"json\"\npath = \"out\"", &postgres_sink)),
        400,
        "no connection \\\"bob-db\\\" is granted",
    );
    check(
        "a memory limit over her ceiling",
        submit(&mutate(
            "multiply = 2.0 }",
            "multiply = 2.0 }\nmemory_limit = \"4GiB\"",
        )),
        400,
        "memory_limit 4294967296 is over this tenant's ceiling",
    );
    check(
        "a timeout over her ceiling",
        submit(&mutate(
            "multiply = 2.0 }",
            "multiply = 2.0 }\ntimeout = \"1h\"",
        )),
        400,
        "is over this tenant's ceiling of 2s",
    );
    check(
        "a query name that climbs",
        submit(&mutate("name = \"probe\"", "name = \"../bob/orders\"")),
        400,
        "must be 1-64 letters",
    );
    check(
        "a swap naming a host file",
        as_eve(
            "POST",
            "/queries/eve/claim/swap",
            "application/json",
            format!(
                r#"{{"stage": "double", "plugin": "{}"}}"#,
                root.join("secret.txt").display()
            )
            .as_bytes(),
        ),
        400,
        "name the plugin by the digest of an upload",
    );

    // -- Uploads and sizes are bounded.
    check(
        "a core module, not a component",
        as_eve("PUT", "/plugins", "application/wasm", b"\0asm\x01\0\0\0"),
        400,
        "not a WebAssembly component",
    );
    let mut big = b"\0asm\x0d\0\x01\0".to_vec();
    big.resize(9 << 20, 0);
    check(
        "a plugin over her upload size",
        as_eve("PUT", "/plugins", "application/wasm", &big),
        429,
        "over its 8388608 bytes",
    );
    let mut fourth = b"\0asm\x0d\0\x01\0".to_vec();
    fourth.extend_from_slice(b"a fourth plugin");
    check(
        "more plugins than her quota",
        as_eve("PUT", "/plugins", "application/wasm", &fourth),
        429,
        "3 plugins uploaded (at most 3)",
    );
    // Over her running-query quota: claim and two more run (idle, no
    // input yet); a fourth is refused. Eve stops the two herself.
    for name in ["extra1", "extra2"] {
        let (status, body) = submit(&eve_pipeline(name, &eve_enrich));
        assert_eq!(status, 201, "{name}: {body}");
    }
    check(
        "a query over her quota of running queries",
        submit(&eve_pipeline("extra3", &eve_enrich)),
        429,
        "3 running queries (at most 3)",
    );
    for name in ["extra1", "extra2"] {
        let (status, body) = as_eve(
            "POST",
            &format!("/queries/eve/{name}/stop"),
            "application/json",
            b"",
        );
        assert_eq!(status, 200, "{name}: {body}");
    }

    // -- Running attacks fail eve's own queries only.
    let bomb = format!("{}\n", "[".repeat(20_000));
    std::fs::write(eve_in.join("in/bomb.json"), bomb).unwrap();
    let loop_text = eve_pipeline("spin", &eve_adversary)
        .replace(
            "config = { input = \"amount\", output = \"amount_x2\", multiply = 2.0 }",
            "config = { mode = \"loop\" }\ntimeout = \"1s\"",
        )
        .replace("connection:eve-landing/in", "connection:eve-landing/loop");
    std::fs::create_dir_all(eve_in.join("loop")).unwrap();
    std::fs::write(
        eve_in.join("loop/f.json"),
        "{\"id\": 1, \"name\": \"x\", \"amount\": 1.0}\n",
    )
    .unwrap();
    let (status, body) = submit(&loop_text);
    assert_eq!(status, 201, "{body}");
    // Meanwhile bob's stream goes on.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        feed_bob();
        std::thread::sleep(Duration::from_millis(100));
    }
    let expected: Vec<i64> = (1..=(5 * bob_files as i64)).collect();
    wait_until("bob's rows, every one once", || {
        let mut ids = committed_ids(&bob_query.join("out"));
        ids.sort();
        ids == expected
    });
    let admin_status: Value = serde_json::from_str(&server.cli(&["status"])).unwrap();
    let state_of = |id: &str| {
        admin_status
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["id"] == id)
            .map(|q| q["status"].clone())
            .unwrap_or_else(|| panic!("{id} missing: {admin_status}"))
    };
    assert_eq!(state_of("bob/orders")["state"], "running");
    wait_until("eve's looping query to fail", || {
        let all: Value = serde_json::from_str(&server.cli(&["status"])).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .any(|q| q["id"] == "eve/spin" && q["status"]["state"] == "failed")
    });
    wait_until("eve's JSON bomb to fail her query", || {
        let all: Value = serde_json::from_str(&server.cli(&["status"])).unwrap();
        all.as_array().unwrap().iter().any(|q| {
            q["id"] == "eve/claim"
                && q["status"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("bomb.json") && e.contains("nested deeper"))
        })
    });

    // Nothing of eve's is in bob's tree; no answer held a secret or bob's data.
    for file in files_under(&state.join("tenants/bob")) {
        assert!(
            file.starts_with("orders/"),
            "a stray file in bob's tenant directory: {file}"
        );
    }
    assert!(!files_under(&bob_in).iter().any(|f| !f.contains("f-")));
    for (case, body) in &answers {
        for secret in [SECRET, DB_PASSWORD, BOB_MARK] {
            assert!(!body.contains(secret), "{case} leaked {secret}: {body}");
        }
    }
    assert!(answers.len() >= 25, "{} cases", answers.len());
    // The host is well and still answers bob.
    let bob_view = server.cli_as("bob", &["status", "bob/orders"]);
    assert!(bob_view.contains("\"state\": \"running\""), "{bob_view}");
    server.terminate();
}
