//! The web console in a real browser: Debian's Chromium driven through
//! chromedriver (both installed by `./dev test`; a missing one fails the
//! test, it never skips) against a real `weir serve` running real queries.
//! The pages are checked against the progress log the host writes, swaps
//! are made from the page, and axe-core (npm, installed by `./dev test`)
//! checks both pages for accessibility. The screenshots land in
//! `target/tmp/console/` (the README's are copies).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{Browser, ENTER};
use crate::common::free_port;
use crate::serve::{
    Server, acme_orders, hosted_pipeline_text, rows_by_batch, wait_until, write_input,
};

fn sign_in(browser: &Browser, server: &Server, token: &str) {
    browser.goto(&format!("{}/console/", server.url()));
    browser.until(
        "the sign-in form",
        "return document.getElementById('token')",
    );
    browser.type_into("#token", token);
    browser.click("#login button[type=submit]");
    browser.until(
        "signed in",
        "return !document.getElementById('sign-out').hidden",
    );
}

/// The query's progress log: one event per committed batch (a line the
/// host is still writing is not one yet).
fn progress_log(query: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(query.join("progress.jsonl")).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Writes files `from..to` one at a time, each committed before the next.
fn feed(input: &Path, query: &Path, files: std::ops::Range<u64>) {
    for n in files {
        let before = progress_log(query).len();
        write_input(input, n);
        wait_until("a batch for the file", || {
            progress_log(query).len() > before
        });
    }
}

/// The points of a chart's series: (batch, value).
fn points(browser: &Browser, chart: &str, series: &str) -> Vec<(u64, f64)> {
    let found = browser.js(
        "return [...document.querySelectorAll(`svg[data-chart='${arguments[0]}'] circle[data-series='${arguments[1]}']`)]
           .map((c) => [Number(c.dataset.batch), Number(c.dataset.value)]);",
        vec![json!(chart), json!(series)],
    );
    found
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        "{what}: {a} != {b}"
    );
}

#[test]
fn the_console_lists_queries_and_its_charts_follow_the_progress_log() {
    let (_dir, input, query, server) = acme_orders();
    feed(&input, &query, 0..3);
    // Another tenant's query, which acme's token must not see.
    let other_input = _dir.path().join("other-in");
    std::fs::create_dir(&other_input).unwrap();
    let other = _dir.path().join("other.toml");
    std::fs::write(&other, hosted_pipeline_text(&other_input)).unwrap();
    server.cli_as("globex", &["submit", other.to_str().unwrap()]);

    let browser = Browser::start();
    sign_in(&browser, &server, &server.token("acme"));
    // The queries page: acme's query, running, with its batches.
    browser.until(
        "acme/orders listed with its batches",
        "const row = document.querySelector(\"tr[data-query='acme/orders']\");
         return row && row.querySelector('[data-batches]').dataset.batches >= 3 && row.innerText;",
    );
    assert!(browser.text("#queries").contains("running"));
    assert!(
        !browser.text("main").contains("globex"),
        "acme's token sees another tenant's query:\n{}",
        browser.text("main")
    );
    let shot = browser.screenshot("queries");
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
    let serious = browser.serious_accessibility_violations();
    assert!(serious.is_empty(), "queries page: {serious:#?}");

    // The query page, reached by its link; the page is never reloaded
    // below (the marker survives), so new points come from the live stream.
    browser.click("tr[data-query='acme/orders'] a");
    browser.until(
        "the rate chart",
        "return document.querySelectorAll(\"svg[data-chart='rates'] circle[data-series='input']\").length >= 3",
    );
    browser.js("window.weirMarker = 'not reloaded';", Vec::new());
    let before = points(&browser, "rates", "input").len();
    feed(&input, &query, 3..9);
    let log = progress_log(&query);
    browser.until(
        "every committed batch on the chart",
        &format!(
            "return document.querySelectorAll(\"svg[data-chart='rates'] circle[data-series='input']\").length >= {}",
            log.len()
        ),
    );
    assert_eq!(
        browser.js("return window.weirMarker;", Vec::new()),
        json!("not reloaded")
    );
    let processed = points(&browser, "rates", "processed");
    assert!(processed.len() > before, "{processed:?}");
    // Exactly the logged batches, with the logged rates.
    let logged: Vec<(u64, f64)> = log
        .iter()
        .map(|p| {
            (
                p["batchId"].as_u64().unwrap(),
                p["processedRowsPerSecond"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        processed.iter().map(|p| p.0).collect::<Vec<_>>(),
        logged.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    for ((batch, shown), (_, expected)) in processed.iter().zip(&logged) {
        assert_close(
            *shown,
            *expected,
            &format!("batch {batch}'s processed rows/s"),
        );
    }
    // One bar segment per phase per batch; the plan; the recent batches.
    let phases = browser.js(
        "return document.querySelectorAll(\"svg[data-chart='phases'] rect[data-phase]\").length",
        Vec::new(),
    );
    assert_eq!(phases, json!(log.len() * 6));
    let plan = browser.text("#plan");
    for step in ["READ", "TRANSFORM", "WRITE", "double"] {
        assert!(plan.contains(step), "plan lacks {step}:\n{plan}");
    }
    let batches = browser.text("#batches");
    let newest = log.last().unwrap();
    assert!(
        batches.contains(&newest["batchId"].to_string()),
        "{batches}"
    );
    let shot = browser.screenshot("query");
    assert!(std::fs::metadata(shot).unwrap().len() > 10_000);
    let serious = browser.serious_accessibility_violations();
    assert!(serious.is_empty(), "query page: {serious:#?}");

    // Another tenant's query is not found, not shown.
    browser.goto(&format!("{}/console/#/query/globex/orders", server.url()));
    browser.until(
        "the refusal",
        "return document.querySelector('main').innerText.includes('No such query')",
    );
    server.terminate();
}

#[test]
fn a_swap_from_the_console_takes_effect_at_the_next_batch() {
    let (_dir, input, query, server) = acme_orders();
    feed(&input, &query, 0..2);
    let browser = Browser::start();
    sign_in(&browser, &server, &server.token("acme"));
    browser.goto(&format!("{}/console/#/query/acme/orders", server.url()));
    browser.until(
        "the swap form",
        "return document.getElementById('swap-file')",
    );
    let enrich = format!("{}/weir_plugin_enrich.wasm", weir_fixtures::PLUGIN_DIR);
    browser.js(
        "document.getElementById('swap-stage').value = arguments[0];",
        vec![json!("double")],
    );
    browser.type_into("#swap-file", &enrich);
    browser.type_into(
        "#swap-config",
        r#"{"input":"amount","output":"amount_x2","multiply":7.0}"#,
    );
    browser.click("#swap button[type=submit]");
    let digest = browser.until(
        "the swap accepted",
        "const r = document.getElementById('swap-result'); return r && r.dataset.digest;",
    );
    let digest = digest.as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // The next batch runs the new version: its rows are multiplied by 7.
    let swapped_at = progress_log(&query).len() as u64;
    feed(&input, &query, 2..3);
    let out = query.join("out");
    let batches = rows_by_batch(&out);
    let (batch, rows) = batches.last().unwrap();
    assert!(*batch >= swapped_at, "{batches:?}");
    for row in rows {
        let amount = row["amount"].as_f64().unwrap();
        assert_close(
            row["amount_x2"].as_f64().unwrap(),
            amount * 7.0,
            "amount_x2",
        );
    }
    let log = progress_log(&query);
    assert!(
        log.last().unwrap()["pluginEvents"]
            .to_string()
            .contains("swapped"),
        "{:?}",
        log.last()
    );
    // The page shows the new version and the swap in its history.
    browser.until(
        "the new digest on the page",
        &format!(
            "const cell = document.querySelector(\"#plugins tr[data-stage='double'] [data-digest]\");
             return cell && cell.dataset.digest === '{digest}';"
        ),
    );
    assert!(browser.text("#plugin-history").contains("swapped"));
    server.terminate();
}

#[test]
fn a_failing_plugins_error_shows_on_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let server = Server::start(&state, free_port(), &dir.path().join("serve.log"));
    let input = dir.path().join("crash-in");
    std::fs::create_dir(&input).unwrap();
    let text = hosted_pipeline_text(&input).replace(
        "plugin = \"${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm\"\nconfig = { input = \"amount\", output = \"amount_x2\", multiply = 2.0 }",
        &format!(
            "plugin = \"{}\"\nconfig = {{ mode = \"panic\" }}",
            weir_fixtures::ADVERSARY
        ),
    );
    assert!(text.contains("mode = \"panic\""), "{text}");
    let file = dir.path().join("crash.toml");
    std::fs::write(&file, text).unwrap();
    server.cli_as("acme", &["submit", file.to_str().unwrap()]);

    let browser = Browser::start();
    sign_in(&browser, &server, &server.token("acme"));
    browser.goto(&format!("{}/console/#/query/acme/orders", server.url()));
    browser.until(
        "the query page",
        "return document.querySelector('[data-state]')",
    );
    // It fails on its first batch; the page learns it from the stream.
    write_input(&input, 0);
    let failure = browser.until(
        "the failure on the page",
        "const f = document.getElementById('failure'); return f && f.innerText;",
    );
    let failure = failure.as_str().unwrap();
    assert!(failure.contains("the plugin trapped"), "{failure}");
    assert!(failure.contains("panicking on purpose"), "{failure}");
    // With the Wasm backtrace, as the host reports it.
    assert!(failure.contains("wasm backtrace"), "{failure}");
    assert_eq!(
        browser.js(
            "return document.querySelector('[data-state]').dataset.state",
            Vec::new()
        ),
        json!("failed")
    );
    server.terminate();
}

/// An event stream opened on `server` with `token` (and `query`, if any):
/// the socket, after the response head was checked.
fn open_events(server: &Server, token: &str, query: Option<&str>) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let path = match query {
        Some(id) => format!("/events?query={id}"),
        None => "/events".to_string(),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !head.ends_with(b"\r\n\r\n") && Instant::now() < deadline {
        if let Ok(1) = stream.read(&mut byte) {
            head.push(byte[0]);
        }
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    stream
}

/// What arrived on `stream` until `done` holds of it (or 30 s passed).
fn read_events(stream: &mut std::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    use std::io::Read;
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&text) && Instant::now() < deadline {
        if let Ok(n) = stream.read(&mut buffer) {
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    }
    text
}

#[test]
fn the_event_stream_carries_only_the_callers_queries_and_is_bounded() {
    let (dir, input, query, server) = acme_orders();
    let globex_input = dir.path().join("globex-in");
    std::fs::create_dir(&globex_input).unwrap();
    let globex = dir.path().join("globex.toml");
    std::fs::write(&globex, hosted_pipeline_text(&globex_input)).unwrap();
    server.cli_as("globex", &["submit", globex.to_str().unwrap()]);
    let globex_query = query
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("globex/orders");

    let mut acme_stream = open_events(&server, &server.token("acme"), None);
    let mut globex_stream = open_events(&server, &server.token("globex"), None);
    let mut admin_stream = open_events(&server, server.admin_token(), Some("acme/orders"));
    feed(&input, &query, 0..2);
    feed(&globex_input, &globex_query, 0..1);
    // Each tenant sees its own batches; the admin's filtered stream acme's.
    let batches = |text: &str, id: &str| text.matches(&format!("\"id\":\"{id}\"")).count();
    let acme = read_events(&mut acme_stream, |t| batches(t, "acme/orders") >= 2);
    let globex = read_events(&mut globex_stream, |t| batches(t, "globex/orders") >= 1);
    let admin = read_events(&mut admin_stream, |t| batches(t, "acme/orders") >= 2);
    assert!(acme.contains("event: progress"), "{acme}");
    assert_eq!(batches(&acme, "acme/orders"), 2, "{acme}");
    assert_eq!(
        batches(&acme, "globex/orders"),
        0,
        "acme saw globex:\n{acme}"
    );
    assert_eq!(
        batches(&globex, "acme/orders"),
        0,
        "globex saw acme:\n{globex}"
    );
    assert_eq!(batches(&admin, "globex/orders"), 0, "{admin}");
    // Another tenant's query cannot be named in the filter: "not found".
    let port: u16 = server.url().rsplit(':').next().unwrap().parse().unwrap();
    let refused = crate::common::http_with(
        port,
        "GET /events?query=acme/orders HTTP/1.1",
        &[&format!("Authorization: Bearer {}", server.token("globex"))],
    )
    .unwrap();
    assert!(refused.starts_with("HTTP/1.1 404"), "{refused}");
    // A tenant holds at most 16 streams; one more is refused (429).
    let mut held = vec![globex_stream];
    for _ in 1..16 {
        held.push(open_events(&server, &server.token("globex"), None));
    }
    let over = crate::common::http_with(
        port,
        "GET /events HTTP/1.1",
        &[&format!("Authorization: Bearer {}", server.token("globex"))],
    )
    .unwrap();
    assert!(over.starts_with("HTTP/1.1 429"), "{over}");
    // The console itself is static, behind the Host check, and strict.
    let page = crate::common::http(port, "GET /console/ HTTP/1.1").unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );
    let rebound = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(
                b"GET /console/ HTTP/1.1\r\nHost: weir.attacker.example\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    // Open streams end when the host shuts down: it exits.
    let log = server.terminate();
    assert!(log.contains("stopping every query"), "{log}");
    drop((held, acme_stream, admin_stream));
}

#[test]
fn weir_run_serves_the_console_of_its_one_query() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let pipeline = dir.path().join("orders.toml");
    std::fs::write(&pipeline, crate::serve::pipeline_text(&input)).unwrap();
    let port = free_port();
    let log = dir.path().join("run.log");
    let mut run = crate::common::weir()
        .current_dir(dir.path())
        .args(["run", pipeline.to_str().unwrap(), "--ui"])
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The token is in a file (mode 0600) whose path is printed; the token is not.
    let mut token_file = None;
    wait_until("the console's address", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        token_file = text
            .split("sign in with the token in ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .map(PathBuf::from);
        token_file.is_some()
    });
    let token_file = token_file.unwrap();
    let token = std::fs::read_to_string(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the token file is readable by others");
    assert!(!std::fs::read_to_string(&log).unwrap().contains(&token));

    write_input(&input, 0);
    let browser = Browser::start();
    let url = format!("http://127.0.0.1:{port}");
    browser.goto(&format!("{url}/console/"));
    browser.until(
        "the sign-in form",
        "return document.getElementById('token')",
    );
    // By keyboard alone, this time: type the token, Enter; Tab to the
    // query's link, Enter; later Tab to Stop, Enter.
    browser.tab_to("#token");
    browser.type_into("#token", &token);
    browser.press(ENTER);
    browser.until(
        "the query listed",
        "return document.querySelector(\"tr[data-query='local/orders']\")",
    );
    browser.tab_to("tr[data-query='local/orders'] a");
    browser.press(ENTER);
    write_input(&input, 1);
    browser.until(
        "two batches on the chart",
        "return document.querySelectorAll(\"svg[data-chart='rates'] circle[data-series='input']\").length >= 2",
    );
    assert!(browser.text("#plan").contains("double"));
    // Stop from the page: the run stops after its batch and exits.
    browser.tab_to("#stop");
    browser.press(ENTER);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "weir run did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        text.contains("query `orders`: stopped after 2 batch(es)"),
        "{text}"
    );
    assert!(!token_file.exists(), "the token file outlived the run");
    let out = dir.path().join("out");
    assert_eq!(rows_by_batch(&out).len(), 2);
}
