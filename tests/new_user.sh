#!/usr/bin/env bash
# The README's first command as a new user runs it, then every example the
# README lists, with nothing but what that command built.
#
# "A new user": a fresh HOME (no ~/.cache/weir: no test virtualenv, no
# JavaScript tools), none of the test tools' environment variables, and a
# PATH holding the system's commands less every plugin toolchain but Rust's:
# no node/npm, componentize-py/-js, esbuild, wasm32 clang/lld or python.
# What the tests compiled is reused from CARGO_TARGET_DIR: Weir's host build
# (the same compiled units a user's first `./dev demo` makes, see
# Cargo.toml; with the clippy-driver that compiled them for the tests, see
# ./dev) and the Rust plugins (./dev and tests/fixtures share their target
# directory), so `./dev demo` rebuilds what a change made stale and the
# examples run on what it built.
#
# Run by `./dev test` after the test suite; prints one closing line.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?run through ./dev test}"

scratch=$(mktemp -d)
pg_data=""
cleanup() {
  if [ -n "$pg_data" ]; then as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true; fi
  rm -rf "$scratch"
}
trap cleanup EXIT
chmod 755 "$scratch"   # the PostgreSQL server, run as its own user, needs a way in

# A PATH without the toolchains a new user does not have.
bin="$scratch/bin"
mkdir -p "$bin" "$scratch/home"
# The host's `clang`/`clang++` stay (`./dev demo` installs them for
# RocksDB); the versioned clang-N, wasm-ld-N and lld of the C plugins go.
hidden='^(node|nodejs|npm|npx|corepack|esbuild|componentize.*|jco|clang-.*|clang\+\+-.*|wasm-.*|ld\.lld.*|lld.*|python.*|pip.*)$'
for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
  for tool in "$dir"/*; do
    name=${tool##*/}
    [[ $name =~ $hidden ]] && continue
    [ -e "$bin/$name" ] || ln -s "$tool" "$bin/$name"
  done
done
# Rust as rustup installs it: its proxies, nothing else from their
# directory (~/.cargo/bin, or wherever the `cargo` on PATH lives: a
# CARGO_HOME of its own need not hold them).
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rust_bin=$(dirname "$(command -v cargo)")
for tool in cargo rustc rustup rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
  [ -e "$rust_bin/$tool" ] && ln -sf "$rust_bin/$tool" "$bin/$tool"
done

# The clippy-driver that compiled the workspace for the tests (./dev test).
compiler=()
if [ -n "${RUSTC_WORKSPACE_WRAPPER:-}" ]; then
  compiler=(RUSTC_WORKSPACE_WRAPPER="$RUSTC_WORKSPACE_WRAPPER" CLIPPY_ARGS="${CLIPPY_ARGS:-}")
fi
new_user_env=(HOME="$scratch/home" PATH="$bin" TERM=dumb
  CARGO_HOME="$cargo_home" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR" "${compiler[@]}")
as_new_user() {
  env -i "${new_user_env[@]}" "$@"
}

passed=0
failed=0
fail() {
  echo "FAILED: $1" >&2
  [ -f "${2:-}" ] && tail -n 40 "$2" >&2
  failed=$((failed + 1))
}

echo "==> ./dev demo as a new user (fresh HOME; no node, npm, componentize-*, wasm32 clang or python on PATH)" >&2
started=$(date +%s)
if as_new_user ./dev demo >"$scratch/demo.log" 2>&1; then
  # The demo's rows, as the golden file has them (order and spacing aside).
  if python3 - examples/demo/.weir/output examples/demo/expected-output.jsonl <<'EOF'
import glob, json, sys
out, golden = sys.argv[1], sys.argv[2]
rows = lambda paths: sorted(json.dumps(json.loads(l), sort_keys=True)
                            for p in paths for l in open(p) if l.strip())
got, want = rows(sorted(glob.glob(out + "/part-*.jsonl"))), rows([golden])
if got != want:
    sys.exit(f"the demo wrote {len(got)} rows, not the {len(want)} golden rows:\n" + "\n".join(got))
EOF
  then
    passed=$((passed + 1))
    echo "    ok: the demo's output is the golden output ($(($(date +%s) - started)) s)" >&2
  else
    fail "./dev demo wrote other rows than examples/demo/expected-output.jsonl" "$scratch/demo.log"
  fi
else
  fail "./dev demo" "$scratch/demo.log"
fi

# PostgreSQL for the `cdc` example, as a user would have one (DATABASE_URL).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
as_postgres() {
  if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi
}
pg_data_dir="$scratch/pg"
start_postgres() {
  local port=$((20000 + RANDOM % 20000))
  mkdir -p "$pg_data"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$pg_data"; fi
  as_postgres "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust >"$scratch/pg.log" 2>&1
  as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -w -l "$pg_data/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_data" start >>"$scratch/pg.log" 2>&1
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

# Every example the README lists, on the demo's build: it runs to the end
# and writes rows.
examples=$(sed -n 's/^| `examples\/\([a-z-]*\)` |.*/\1/p' README.md)
[ -n "$examples" ] || fail "no examples found in README.md's table"
for name in $examples; do
  dir="$scratch/examples/$name"
  mkdir -p "$dir"
  cp -r "examples/$name/." "$dir"
  rm -rf "$dir/.weir"
  extra=()
  if grep -q 'DATABASE_URL' "$dir/pipeline.toml"; then
    pg_data=$pg_data_dir
    url=$(start_postgres) || { fail "$name: could not start PostgreSQL" "$scratch/pg.log"; continue; }
    # The tables the pipeline's comment says to create, as a user would.
    sed -n 's/^#[[:space:]]*\(CREATE TABLE .*;\)$/\1/p' "$dir/pipeline.toml" \
      | "$pg_bin/psql" -q -v ON_ERROR_STOP=1 "$url" >>"$scratch/pg.log" 2>&1 \
      || { fail "$name: could not create its tables" "$scratch/pg.log"; continue; }
    extra=(DATABASE_URL="$url")
  fi
  log="$scratch/$name.log"
  plugin_dir="$CARGO_TARGET_DIR/wasm-plugins/wasm32-wasip2/release"
  if grep -q '^continuous = ' "$dir/pipeline.toml"; then
    # A continuous query runs until stopped: as a user would, stop it
    # (SIGTERM, as Ctrl-C) once its rows are out, or after 60 s.
    # exec: the background job is weir itself, so the signal reaches it.
    (exec env -i "${new_user_env[@]}" WEIR_PLUGIN_DIR="$plugin_dir" \
      "$CARGO_TARGET_DIR/debug/weir" run "$dir/pipeline.toml" >"$log" 2>&1) &
    pid=$!
    rows=0
    for _ in $(seq 600); do
      rows=$(cat "$dir"/.weir/output/part-*.jsonl 2>/dev/null | grep -c . || true)
      [ "$rows" -gt 0 ] && break
      sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null || true
    if wait "$pid" && [ "$rows" -gt 0 ]; then
      passed=$((passed + 1))
      echo "    ok: examples/$name ($rows rows out, stopped by SIGTERM)" >&2
    else
      fail "examples/$name (continuous: $rows rows out, or no clean stop)" "$log"
    fi
    continue
  fi
  if as_new_user "${extra[@]}" WEIR_PLUGIN_DIR="$plugin_dir" \
    "$CARGO_TARGET_DIR/debug/weir" run "$dir/pipeline.toml" >"$log" 2>&1; then
    rows=$(sed -n 's/^batch [0-9]*: .* rows in .*, \([0-9]*\) rows out.*/\1/p' "$log" | awk '{ n += $1 } END { print n + 0 }')
    if [ "${rows:-0}" -gt 0 ]; then
      passed=$((passed + 1))
      echo "    ok: examples/$name ($rows rows out)" >&2
    else
      fail "examples/$name ran but wrote no rows" "$log"
    fi
  else
    fail "examples/$name" "$log"
  fi
done

echo "new user: $passed passed, $failed failed"
[ "$failed" = 0 ]
