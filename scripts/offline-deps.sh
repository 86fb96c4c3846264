# Sourced by the GPU scripts: install Python packages that are missing, from a wheel folder only.
#
#   ensure_modules PYTHON WHEEL_DIR module=pip-name ...
#
# Nothing comes from the network: a module that cannot be imported is installed from WHEEL_DIR
# (pip --no-index); with no such folder the script stops and names what is missing.
ensure_modules() {
  local python=$1 wheels=$2
  shift 2
  local missing
  missing=$("$python" - "$@" <<'PY'
import importlib.util
import sys

pairs = [arg.split("=", 1) for arg in sys.argv[1:]]
print(" ".join(pip for module, pip in pairs if importlib.util.find_spec(module) is None))
PY
)
  if [[ -z "$missing" ]]; then
    return 0
  fi
  if [[ ! -d "$wheels" ]]; then
    echo "missing Python packages: $missing (no wheel folder at $wheels)" >&2
    return 1
  fi
  echo "installing from $wheels: $missing"
  # shellcheck disable=SC2086  # one pip argument per missing package
  "$python" -m pip install --no-index --find-links "$wheels" $missing
}
