//! A throwaway PostgreSQL server for the tests: `initdb` and `postgres`
//! (Debian's `postgresql` package, installed by `./dev test`) in a scratch
//! directory, listening on 127.0.0.1 only. Started once per test binary on
//! first use and killed with it; each test gets its own database.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Server {
    port: u16,
}

/// The server's binaries: the newest /usr/lib/postgresql/<v>/bin, or PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| Some(e.ok()?.path().join("bin")))
                .filter(|bin| bin.join("initdb").is_file())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = versions.pop() {
        return bin;
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match which.and_then(|p| p.parent().map(Path::to_path_buf)) {
        Some(bin) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, postgres) not found: run `./dev test`, \
             which installs Debian's `postgresql` package, or install PostgreSQL"
        ),
    }
}

/// As root, the server must run as another user: Debian's `postgres`.
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root, the test PostgreSQL needs the `postgres` user (Debian's package creates it)"
    );
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

/// `cmd` run as `user`, if set.
fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    // SAFETY: setgid/setuid are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes scratch directories of earlier test runs whose process is gone.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("weir-test-pg-")
            .and_then(|p| p.parse::<i32>().ok())
            && unsafe { libc::kill(pid, 0) } != 0
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Server {
    let bin = bin_dir();
    let user = server_user();
    let tmp = std::env::temp_dir();
    remove_stale(&tmp);
    let dir = tmp.join(format!("weir-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let data = dir.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args([
            "-U",
            "weir",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data);
    as_user(&mut initdb, user);
    let out = initdb.output().expect("cannot run initdb");
    assert!(
        out.status.success(),
        "initdb failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-k")
        .arg(&dir)
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
    as_user(&mut postgres, user);
    if let Err(e) = crate::common::spawn_for_test_lifetime(postgres) {
        panic!("cannot start postgres: {e}");
    }
    let server = Server { port };
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = server.try_query("postgres", "SELECT 1") {
        assert!(
            Instant::now() < deadline,
            "postgres did not start on 127.0.0.1:{port}: {e}\n{}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

impl Server {
    fn url(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=weir dbname={database}",
            self.port
        )
    }

    fn try_query(&self, database: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        query_url(&self.url(database), sql)
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start)
}

/// A new, empty database; returns its connection string.
pub fn database(hint: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("{hint}_{}", NEXT.fetch_add(1, Ordering::SeqCst));
    let server = server();
    server
        .try_query("postgres", &format!("CREATE DATABASE \"{name}\""))
        .unwrap();
    server.url(&name)
}

/// Runs `sql` (one or more statements); the rows of the last one, as text.
pub fn query(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    query_url(url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn query_url(url: &str, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let messages = client
            .simple_query(sql)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let mut rows = Vec::new();
        for message in messages {
            match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {}
                _ => {}
            }
        }
        Ok(rows)
    })
}
