#!/usr/bin/env bash
# Install what the HTTP benchmark needs, idempotently: wrk (from Debian) and the Python packages in the venv.
#   bash bench/setup.sh            # wrk + uvicorn/starlette/httpx (and gunicorn/flask for --wsgi) in .venv
#   bash bench/setup.sh --uvloop   # also uvloop and httptools, for `http_bench.py --uvloop`
#   bash bench/setup.sh --extra    # also httpx-aiohttp and pyreqwest, for `http_bench.py --extra-transports`
#   bash bench/setup.sh --valgrind # also valgrind (Debian), for `instructions_bench.py`
# Runs as root on a clean Debian machine that has only Python, pip, gcc and make; re-running changes nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"

# wrk drives the load; nginx is the reference proxy hop (`hash $http_x_tenant consistent`).
if ! command -v wrk >/dev/null 2>&1 || { ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; }; then
    echo "setup: installing wrk and nginx from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends wrk nginx-light || apt-get install -y -qq --no-install-recommends wrk nginx
fi
wrk --version 2>&1 | head -n 1 || true
for arg in "$@"; do
    if [ "$arg" = "--valgrind" ] && ! command -v callgrind_control >/dev/null 2>&1; then
        echo "setup: installing valgrind from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends valgrind
    fi
done

if [ ! -x "$PY" ]; then
    echo "setup: creating the virtualenv at $ROOT/.venv"
    python3 -m venv "$ROOT/.venv"
    PY="$ROOT/.venv/bin/python"
fi

# Module names that are also their PyPI names: the servers, the apps (Starlette; Flask for --wsgi), both forwarding
# clients of each stack and affinity_mw's own dependencies (affinity_mw itself is imported from the checkout: the
# benchmark puts the root on PYTHONPATH).
need=(uvicorn starlette h11 httpx aiohttp itsdangerous urllib3 gunicorn flask)
# --extra: the benchmark-only clients of `http_bench.py --extra-transports` (module:PyPI name; not dependencies).
extra=()
for arg in "$@"; do
    case "$arg" in
        --uvloop) need+=(uvloop httptools) ;;
        --extra) extra+=(httpx_aiohttp:httpx-aiohttp pyreqwest:pyreqwest) ;;
        --valgrind) ;;
        *) echo "setup: unknown option $arg (use --uvloop, --extra and/or --valgrind)" >&2; exit 2 ;;
    esac
done
missing=()
for module in "${need[@]}"; do
    "$PY" -c "import $module" >/dev/null 2>&1 || missing+=("$module")
done
for pair in "${extra[@]}"; do
    "$PY" -c "import ${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]} into the virtualenv"
    "$PY" -m pip install -q "${missing[@]}"
fi
PYTHONPATH="$ROOT" "$PY" -c "import affinity_mw, bench.app, bench.wsgi_app; bench.app.make_app(); bench.wsgi_app.wrapped" \
    || { echo "setup: bench/app.py or bench/wsgi_app.py does not import; see the error above" >&2; exit 1; }
echo "setup: ok"
