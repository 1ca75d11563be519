//! Power loss: a commit must never survive the data it commits.
//!
//! `weir run` runs under strace, which records every file creation, write,
//! rename, link and fsync. The trace is then replayed against the worst
//! case a power loss allows: an operation not yet made durable by an fsync
//! (of the file for its contents, of its directory for its name) may or may
//! not survive, each independently. So at the moment a commit entry is
//! created — a file sink's `_weir_log/N`, the checkpoint's `commits/N` —
//! everything it vouches for must already be durable, or some crash keeps
//! the entry and loses the rows. And when the process ends, every entry it
//! created is durable.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Scenario, Spec, assert_ok, weir};

/// What the trace says happened to a path, in order.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// A name appeared in its directory (created, renamed or linked to);
    /// `from` is the file whose contents it now has.
    Named {
        path: PathBuf,
        from: Option<PathBuf>,
    },
    /// Bytes written through a descriptor of the file.
    Written(PathBuf),
    /// fsync/fdatasync of a file or directory.
    Synced(PathBuf),
}

/// Durable state under the worst case: contents synced since the last
/// write, names synced (their directory fsynced) since they appeared.
#[derive(Default)]
struct Disk {
    dirty_contents: HashSet<PathBuf>,
    unsynced_names: HashSet<PathBuf>,
}

impl Disk {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Named { path, from } => {
                self.unsynced_names.insert(path.clone());
                let dirty = from
                    .as_ref()
                    .is_some_and(|f| self.dirty_contents.contains(f));
                if dirty {
                    self.dirty_contents.insert(path.clone());
                } else {
                    self.dirty_contents.remove(path);
                }
            }
            Op::Written(path) => {
                self.dirty_contents.insert(path.clone());
            }
            Op::Synced(path) => {
                self.dirty_contents.remove(path);
                self.unsynced_names
                    .retain(|name| name.parent() != Some(path.as_path()));
            }
        }
    }

    /// Whether `path` and its contents survive any crash from now on:
    /// contents synced, and its name and every new directory above it.
    fn durable(&self, path: &Path) -> bool {
        self.why_not_durable(path).is_none()
    }

    fn why_not_durable(&self, path: &Path) -> Option<String> {
        if self.dirty_contents.contains(path) {
            return Some("its contents were not fsynced".into());
        }
        path.ancestors()
            .find(|p| self.unsynced_names.contains(*p))
            .map(|p| format!("the name {} was not fsynced in its directory", p.display()))
    }
}

/// Parses strace's output (`-f -y`, one syscall per line, `<unfinished
/// ...>` calls joined with their `<... resumed>` ends) into operations on
/// paths under `root`.
fn parse_trace(trace: &str, root: &Path) -> Vec<Op> {
    let mut pending: HashMap<&str, String> = HashMap::new();
    let mut ops = Vec::new();
    for line in trace.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        let call = if let Some(start) = call.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, start.to_string());
            continue;
        } else if let Some(rest) = call.strip_prefix("<... ") {
            let Some(start) = pending.remove(pid) else {
                continue;
            };
            let end = rest.split_once("resumed>").map_or("", |(_, end)| end);
            format!("{start}{end}")
        } else {
            call.to_string()
        };
        if let Some(op) = parse_call(&call) {
            let under_root = |p: &PathBuf| p.starts_with(root);
            let keep = match &op {
                Op::Named { path, .. } | Op::Written(path) | Op::Synced(path) => under_root(path),
            };
            if keep {
                ops.push(op);
            }
        }
    }
    ops
}

/// One completed syscall line, e.g.
/// `renameat2(AT_FDCWD</d>, "/d/a#1", AT_FDCWD</d>, "/d/a", 0) = 0`.
fn parse_call(call: &str) -> Option<Op> {
    let (name, rest) = call.split_once('(')?;
    // strace pads short calls: `fsync(3</d>)   = 0`.
    let (args, result) = rest.rsplit_once(" = ")?;
    let args = args.trim_end().strip_suffix(')')?;
    if result.starts_with('-') {
        return None; // failed
    }
    // Path arguments: fds decoded by -y as `N</path>`, names as "path".
    let fd_path = |text: &str| -> Option<PathBuf> {
        let start = text.find('<')?;
        let end = text[start..].find('>')? + start;
        Some(PathBuf::from(&text[start + 1..end]))
    };
    let strings: Vec<PathBuf> = args
        .split('"')
        .skip(1)
        .step_by(2)
        .map(PathBuf::from)
        .collect();
    let absolute = |i: usize| strings.get(i).filter(|p| p.is_absolute()).cloned();
    match name {
        "openat" if args.contains("O_CREAT") => Some(Op::Named {
            path: fd_path(result)?,
            from: None,
        }),
        "mkdir" | "mkdirat" => Some(Op::Named {
            path: absolute(0)?,
            from: None,
        }),
        "rename" | "renameat" | "renameat2" | "link" | "linkat" => Some(Op::Named {
            path: absolute(1)?,
            from: absolute(0),
        }),
        "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
            Some(Op::Written(fd_path(args)?))
        }
        "fsync" | "fdatasync" => Some(Op::Synced(fd_path(args)?)),
        _ => None,
    }
}

#[test]
fn no_crash_point_keeps_a_commit_whose_data_is_lost() {
    let s = Scenario::new(Spec {
        max_files: Some(1),
        transforms: vec![],
        ..Spec::default()
    });
    s.json_inputs(3, 4);
    let root = s.path("").canonicalize().unwrap();
    let trace_file = root.join("strace.txt");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-s", "0", "-o"])
        .arg(&trace_file)
        .args(["-e", "trace=openat,write,pwrite64,writev,pwritev,pwritev2,rename,renameat,renameat2,link,linkat,mkdir,mkdirat,fsync,fdatasync"]);
    let weir = weir();
    cmd.arg(weir.get_program())
        .arg("run")
        .arg(s.pipeline_path());
    for (key, value) in weir.get_envs() {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let output = cmd
        .output()
        .expect("strace is needed for this test (`./dev test` installs it)");
    assert_ok(&output);
    assert_eq!(s.output_ids(), (1..=12).collect::<Vec<_>>());

    let trace = std::fs::read_to_string(&trace_file).unwrap();
    let ops = parse_trace(&trace, &root);
    let (out, ck) = (root.join("out"), root.join("ck"));
    let mut disk = Disk::default();
    let mut commits = Vec::new();
    for op in &ops {
        if let Op::Named { path, .. } = op {
            // The entry may survive from here on: what it vouches for must
            // not be able to vanish.
            let batch = |dir: &Path| -> Option<u64> {
                (path.parent() == Some(dir)).then(|| path.file_name()?.to_str()?.parse().ok())?
            };
            if let Some(n) = batch(&out.join("_weir_log")) {
                let data = out.join(format!("part-{n:06}.jsonl"));
                if let Some(why) = disk.why_not_durable(&data) {
                    panic!("_weir_log/{n} created while {}: {why}", data.display());
                }
            }
            if let Some(n) = batch(&ck.join("commits")) {
                for vouched in [
                    out.join(format!("_weir_log/{n}")),
                    ck.join(format!("offsets/{n}")),
                ] {
                    if let Some(why) = disk.why_not_durable(&vouched) {
                        panic!("commits/{n} created while {}: {why}", vouched.display());
                    }
                }
                commits.push(n);
            }
        }
        disk.apply(op);
    }
    assert_eq!(
        commits,
        vec![0, 1, 2],
        "the trace missed the commits ({} operations)",
        ops.len()
    );
    for n in commits {
        if let Some(why) = disk.why_not_durable(&ck.join(format!("commits/{n}"))) {
            panic!("commits/{n} at exit: {why}");
        }
    }
}

#[test]
fn the_trace_replay_catches_a_commit_made_before_its_data_is_synced() {
    // The checker itself, on a hand-written trace: data renamed into place
    // but never fsynced, then the log entry.
    let trace = "\
1 openat(AT_FDCWD</r>, \"/r/out/part-000000.jsonl#1\", O_WRONLY|O_CREAT|O_EXCL, 0666) = 3</r/out/part-000000.jsonl#1>
1 write(3</r/out/part-000000.jsonl#1>, \"\"..., 10) = 10
1 rename(\"/r/out/part-000000.jsonl#1\", \"/r/out/part-000000.jsonl\") = 0
1 fsync(4</r/out> <unfinished ...>
2 openat(AT_FDCWD</r>, \"/r/out/_weir_log/0#2\", O_WRONLY|O_CREAT|O_EXCL, 0666) = 5</r/out/_weir_log/0#2>
1 <... fsync resumed>)  = 0
";
    let ops = parse_trace(trace, Path::new("/r"));
    let part = Path::new("/r/out/part-000000.jsonl");
    let mut disk = Disk::default();
    for op in &ops {
        disk.apply(op);
    }
    assert_eq!(ops.len(), 5, "{ops:?}");
    // The resumed fsync of the directory came last: the name is durable,
    // the contents written through the staging file are not.
    assert_eq!(ops[4], Op::Synced("/r/out".into()));
    assert!(!disk.unsynced_names.contains(part));
    assert!(!disk.durable(part));
    disk.apply(&Op::Synced(part.into()));
    assert!(disk.durable(part));
}
