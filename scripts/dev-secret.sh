# Sourced by `make run`: give the zero-setup service a signing secret it did not invent.
# SPEC §6: the service never makes up a secret; this development helper creates one once
# with `receiver gen-secret`, mode 0600, under the data dir, and says where it is.
if [ -z "${RECEIVER_WEBHOOK_SECRET:-}" ] && [ -z "${RECEIVER_WEBHOOK_SECRET_FILE:-}" ]; then
  secret_file="${RECEIVER_DATA_DIR:-./receiver-data}/dev-webhook-secret"
  if [ ! -s "$secret_file" ]; then
    mkdir -p "$(dirname "$secret_file")"
    (umask 077 && .venv/bin/receiver gen-secret > "$secret_file")
    echo "receiver: created a development signing secret in $secret_file (mode 0600)" >&2
  fi
  export RECEIVER_WEBHOOK_SECRET_FILE="$secret_file"
  echo "receiver: using RECEIVER_WEBHOOK_SECRET_FILE=$secret_file; try: .venv/bin/receiver send-test" >&2
fi
