# shellcheck shell=bash
# Sourced by start-orchestrator.sh and run-tests.sh: make sure .venv holds the
# project with the locked dependency versions, installing only when
# pyproject.toml or constraints.txt changed since the last install.
#   bootstrap_venv ROOT EXTRAS   (EXTRAS: "" or "[test]")

bootstrap_venv() {
    local root=$1 extras=$2
    local venv="$root/.venv" python=${PYTHON:-python3}
    local stamp="$venv/.streamorch-install" want
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: Python 3.11 or newer is required ('$python' is $("$python" -V 2>&1 || echo missing));" \
             "set PYTHON=/path/to/python3.11" >&2
        return 3
    fi
    want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | "$python" -c \
        'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')$extras"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    echo "installing dependencies into $venv (first run or changed lock; takes a minute)…" >&2
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv" || return 3
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c "$root/constraints.txt" -e "$root$extras" || {
        echo "error: installing dependencies failed; see pip's message above." \
             "Check network access to the package index, then run the command again." >&2
        return 3
    }
    echo "$want" > "$stamp"
}
