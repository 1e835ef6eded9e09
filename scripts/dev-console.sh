# Sourced by `make run`: a development operator for the console, made once.
# Like dev-secret.sh: `receiver admin-token` prints a token and its users-file line; the
# line goes into a users file and the token into a file beside it, both mode 0600 under the
# data dir, and the console URL is printed with where the token is.
if [ -z "${RECEIVER_ADMIN_USERS_FILE:-}" ]; then
  console_dir="${RECEIVER_DATA_DIR:-./receiver-data}"
  users_file="$console_dir/dev-admin-users"
  token_file="$console_dir/dev-admin-token"
  if [ ! -s "$users_file" ] || [ ! -s "$token_file" ]; then
    mkdir -p "$console_dir"
    minted="$(.venv/bin/receiver admin-token dev operator 2>/dev/null)"
    (umask 077 && printf '%s\n' "$minted" | sed -n 1p > "$token_file" \
      && printf '%s\n' "$minted" | sed -n 2p > "$users_file")
    echo "receiver: created a development console operator 'dev' ($users_file, mode 0600)" >&2
  fi
  export RECEIVER_ADMIN_USERS_FILE="$users_file"
  admin_addr="${RECEIVER_ADMIN_ADDR-127.0.0.1:8081}"
  if [ -n "$admin_addr" ]; then
    echo "receiver: console at http://$admin_addr/ ; sign in with the token in $token_file" >&2
  fi
fi
