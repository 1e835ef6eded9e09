# Sourced by `make run`: give the zero-setup service a signing secret it did not invent.
# SPEC §6: the service never makes up a secret; this development helper creates one once
# with `receiver gen-secret`, mode 0600, under the data dir, and says where it is.
# The commands it suggests use absolute paths, so they work as printed from any directory.
if [ -z "${RECEIVER_WEBHOOK_SECRET:-}" ] && [ -z "${RECEIVER_WEBHOOK_SECRET_FILE:-}" ]; then
  data_dir="${RECEIVER_DATA_DIR:-./receiver-data}"
  mkdir -p "$data_dir"
  data_dir="$(cd "$data_dir" && pwd)"
  secret_file="$data_dir/dev-webhook-secret"
  receiver_bin="$(pwd)/.venv/bin/receiver"
  if [ ! -s "$secret_file" ]; then
    (umask 077 && "$receiver_bin" gen-secret > "$secret_file")
    echo "receiver: created a development signing secret in $secret_file (mode 0600)" >&2
  fi
  export RECEIVER_WEBHOOK_SECRET_FILE="$secret_file"
  echo "receiver: using RECEIVER_WEBHOOK_SECRET_FILE=$secret_file; in another terminal try:" >&2
  echo "  RECEIVER_WEBHOOK_SECRET_FILE='$secret_file' '$receiver_bin' send-test" >&2
  echo "  RECEIVER_DATA_DIR='$data_dir' '$receiver_bin' events list" >&2
fi
