# Sourced by `make run`: give the zero-setup service a signing secret it did not invent.
# SPEC §6: the service never makes up a secret; this development helper creates one once
# with `receiver gen-secret`, mode 0600, under the data dir, and says where it is.
# The commands it suggests use absolute paths, so they work as printed from any directory.
# VENV_BIN is the venv's bin directory (`make run` passes its own, for `make VENV=...`).
# Sourced without `set -e`, so each step checks itself (as dev-console.sh does).
if [ -z "${RECEIVER_WEBHOOK_SECRET:-}" ] && [ -z "${RECEIVER_WEBHOOK_SECRET_FILE:-}" ]; then
  data_dir="${RECEIVER_DATA_DIR:-./receiver-data}"
  if ! mkdir -p "$data_dir" 2>/dev/null; then
    echo "receiver: cannot create $data_dir for the development signing secret; set RECEIVER_DATA_DIR to a writable directory" >&2
    return 1 2>/dev/null || exit 1
  fi
  data_dir="$(cd "$data_dir" && pwd)"
  secret_file="$data_dir/dev-webhook-secret"
  receiver_bin="${VENV_BIN:-$(pwd)/.venv/bin}/receiver"
  if [ ! -s "$secret_file" ]; then
    if ! (umask 077 && "$receiver_bin" gen-secret > "$secret_file") 2>/dev/null \
      || [ ! -s "$secret_file" ]; then
      rm -f "$secret_file" 2>/dev/null
      echo "receiver: could not create a development signing secret: '$receiver_bin gen-secret' failed (run make run from the repository, after make installs the venv)" >&2
      return 1 2>/dev/null || exit 1
    fi
    echo "receiver: created a development signing secret in $secret_file (mode 0600)" >&2
  fi
  export RECEIVER_WEBHOOK_SECRET_FILE="$secret_file"
  echo "receiver: using RECEIVER_WEBHOOK_SECRET_FILE=$secret_file; in another terminal try:" >&2
  echo "  RECEIVER_WEBHOOK_SECRET_FILE='$secret_file' '$receiver_bin' send-test" >&2
  echo "  RECEIVER_DATA_DIR='$data_dir' '$receiver_bin' events list" >&2
fi
