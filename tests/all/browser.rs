//! A headless Chromium for the console's tests, driven over the W3C
//! WebDriver protocol by Debian's chromedriver (both installed by `./dev
//! test`; a missing one fails the test, it never skips).
//!
//! The client is the protocol's few JSON requests over a loopback socket:
//! a WebDriver crate (fantoccini) brought a second `http`, `cookie`, `time`
//! and ICU into the build and changed features that recompiled most of
//! the dependency graph, for eight requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::free_port;

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// WebDriver's key codes (W3C WebDriver, "keyboard actions").
pub(crate) const TAB: &str = "\u{E004}";
pub(crate) const ENTER: &str = "\u{E007}";

/// Chromium and chromedriver: Debian's by default.
fn tool(variable: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(variable).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.is_file(),
        "{} not found (set {variable}); ./dev test installs Debian's chromium and chromium-driver",
        path.display()
    );
    path
}

/// A Chromium session under its own chromedriver; both end when dropped.
pub(crate) struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) fn start() -> Browser {
        let chromium = tool("WEIR_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = tool("WEIR_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        // As this machine's browser probe starts it: no sandbox (root), no
        // background connections (the network is closed), a fresh profile.
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1366,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        }}});
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.request("POST", "/session", Some(&capabilities));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no Chromium session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver request; its `value`, or a panic with the driver's error.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.send(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let io = |e: std::io::Error| e.to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(io)?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(io)?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).map_err(io)?;
        let mut length = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(io)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut text = Vec::new();
        match length {
            Some(n) => {
                text.resize(n, 0);
                reader.read_exact(&mut text).map_err(io)?;
            }
            None => {
                reader.read_to_end(&mut text).map_err(io)?;
            }
        }
        let answer: Value = serde_json::from_slice(&text).map_err(|e| {
            format!(
                "chromedriver answered {status}: {e}: {}",
                String::from_utf8_lossy(&text)
            )
        })?;
        if !status.contains(" 200 ") {
            return Err(format!("{}{}", status.trim_end(), answer["value"]));
        }
        Ok(answer["value"].clone())
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub(crate) fn goto(&self, url: &str) {
        self.request(
            "POST",
            &self.session_path("/url"),
            Some(&json!({ "url": url })),
        );
    }

    /// Runs `script` (a function body, `arguments` are `args`) in the page.
    pub(crate) fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.request(
            "POST",
            &self.session_path("/execute/sync"),
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script`, which calls its last argument with the result.
    pub(crate) fn js_async(&self, script: &str) -> Value {
        self.request(
            "POST",
            &self.session_path("/execute/async"),
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The element `css` selects (a panic if none).
    fn element(&self, css: &str) -> String {
        let found = self.request(
            "POST",
            &self.session_path("/element"),
            Some(&json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for {css}: {found}"))
            .to_string()
    }

    pub(crate) fn click(&self, css: &str) {
        let element = self.element(css);
        self.request(
            "POST",
            &self.session_path(&format!("/element/{element}/click")),
            Some(&json!({})),
        );
    }

    /// Presses `key` (a WebDriver key code, e.g. [`TAB`]) on the keyboard.
    pub(crate) fn press(&self, key: &str) {
        let actions = json!({ "actions": [{
            "type": "key",
            "id": "keyboard",
            "actions": [{ "type": "keyDown", "value": key }, { "type": "keyUp", "value": key }],
        }]});
        self.request("POST", &self.session_path("/actions"), Some(&actions));
    }

    /// Moves the focus with Tab, as a keyboard user does, until it is on
    /// the element `css` selects (a panic if 50 presses do not reach it).
    pub(crate) fn tab_to(&self, css: &str) {
        let focused = format!(
            "return document.activeElement === document.querySelector({})",
            serde_json::to_string(css).unwrap()
        );
        for _ in 0..50 {
            if self.js(&focused, Vec::new()) == json!(true) {
                return;
            }
            self.press(TAB);
        }
        panic!("Tab never reaches {css}");
    }

    /// Types `text` into the element (for a file input: the file's path).
    pub(crate) fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.request(
            "POST",
            &self.session_path(&format!("/element/{element}/value")),
            Some(&json!({ "text": text })),
        );
    }

    /// Waits until `script` returns something truthy; returns it.
    pub(crate) fn until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let value = self.js(script, Vec::new());
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting: {what} (the page says: {})",
                self.text("main")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The rendered text of the element `css` selects ("" if none).
    pub(crate) fn text(&self, css: &str) -> String {
        self.js(
            "const el = document.querySelector(arguments[0]); return el ? el.innerText : '';",
            vec![json!(css)],
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// A PNG of the whole page (the window grown to its height, then put
    /// back), kept as `target/tmp/console/<name>.png`.
    pub(crate) fn screenshot(&self, name: &str) -> PathBuf {
        let height = self
            .js("return document.documentElement.scrollHeight", Vec::new())
            .as_u64()
            .unwrap_or(1000);
        let rect = |height: u64| json!({ "width": 1366, "height": height.clamp(600, 4000) });
        self.request(
            "POST",
            &self.session_path("/window/rect"),
            Some(&rect(height + 140)),
        );
        let file = self.viewport_screenshot(name);
        self.request(
            "POST",
            &self.session_path("/window/rect"),
            Some(&rect(1000)),
        );
        file
    }

    fn viewport_screenshot(&self, name: &str) -> PathBuf {
        let encoded = self.request("GET", &self.session_path("/screenshot"), None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.png"));
        std::fs::write(&file, png).unwrap();
        file
    }

    /// axe-core's violations of serious or critical impact on the page.
    pub(crate) fn serious_accessibility_violations(&self) -> Vec<Value> {
        let tools = std::env::var("WEIR_JS_TOOLS")
            .expect("WEIR_JS_TOOLS (set by ./dev test: where npm installed axe-core)");
        let axe = Path::new(&tools).join("node_modules/axe-core/axe.min.js");
        let source = std::fs::read_to_string(&axe)
            .unwrap_or_else(|e| panic!("{}: {e} (./dev test installs axe-core)", axe.display()));
        self.js(&source, Vec::new());
        let report = self.js_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then((r) => done(r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                  nodes: v.nodes.map((n) => n.target.join(' ')) }))))
               .catch((e) => done({ error: String(e) }));",
        );
        let violations = report
            .as_array()
            .unwrap_or_else(|| panic!("axe failed: {report}"));
        violations
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .cloned()
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes Chromium (a killed chromedriver would leave it running).
            let _ = self.send("DELETE", &self.session_path(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
