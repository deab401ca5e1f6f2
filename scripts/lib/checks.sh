# Shared by the check scripts: counted checks ending in one "N passed, M failed" line.
# Source it after `cd` to the repo root. A missing tool is a skip locally and a failure under
# CI=true (make tools installs everything).

passed=0
failed=0
skipped=0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

pass() { passed=$((passed + 1)); echo "ok   - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
# skip WHAT: a check that needs a missing tool.
skip() {
  if [[ "${CI:-}" == "true" ]]; then
    fail "$1 (tool missing; CI=true never skips: run make tools)"
  else
    skipped=$((skipped + 1))
    echo "skip - $1 (tool missing: run make tools)"
  fi
}
# check NAME CMD...: runs CMD, counts the result, shows CMD's output (indented) only on failure.
check() {
  local name="$1"
  shift
  if "$@" >"$tmp/out" 2>&1; then
    pass "$name"
  else
    fail "$name"
    sed 's/^/       /' "$tmp/out"
  fi
}
have() { [[ -n "$1" && -x "$1" ]] || command -v "$1" >/dev/null 2>&1; }
# finish: the closing line, and the exit status.
finish() {
  local line="$passed passed, $failed failed"
  if ((skipped > 0)); then line="$line, $skipped skipped"; fi
  echo "$line"
  if ((failed > 0)); then exit 1; fi
  exit 0
}
