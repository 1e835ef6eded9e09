# Sourced by `make run`: a development operator for the console, made once.
# Like dev-secret.sh: `receiver admin-token` prints a token and its users-file line; the
# line goes into a users file and the token into a file beside it, both mode 0600 under the
# data dir, and the console URL is printed with where the token is.
# Sourced without `set -e`, so each step checks itself: a failure stops `make run` with one
# line instead of serving a console whose users file is empty (nobody could sign in).
# `return` ends a sourced script; `|| exit` covers a shell that ran it directly.
if [ -z "${RECEIVER_ADMIN_USERS_FILE:-}" ]; then
  console_dir="${RECEIVER_DATA_DIR:-./receiver-data}"
  users_file="$console_dir/dev-admin-users"
  token_file="$console_dir/dev-admin-token"
  if [ ! -s "$users_file" ] || [ ! -s "$token_file" ]; then
    if ! mkdir -p "$console_dir" 2>/dev/null; then
      echo "receiver: cannot create $console_dir for the development console operator; set RECEIVER_DATA_DIR to a writable directory" >&2
      return 1 2>/dev/null || exit 1
    fi
    # Its stderr is the "line 1 is the token" hint, not for `make run`'s terminal.
    receiver_bin="${VENV_BIN:-.venv/bin}/receiver"  # VENV_BIN: as in dev-secret.sh
    if ! minted="$("$receiver_bin" admin-token dev operator 2>/dev/null)" \
      || [ -z "$(printf '%s\n' "$minted" | sed -n 2p)" ]; then
      echo "receiver: could not create a development console operator: '$receiver_bin admin-token dev operator' failed in $(pwd) (run make run from the repository, after make installs the venv)" >&2
      return 1 2>/dev/null || exit 1
    fi
    if ! (umask 077 && printf '%s\n' "$minted" | sed -n 1p > "$token_file" \
      && printf '%s\n' "$minted" | sed -n 2p > "$users_file") 2>/dev/null; then
      rm -f "$token_file" "$users_file" 2>/dev/null
      echo "receiver: could not write the development console operator's files under $console_dir" >&2
      return 1 2>/dev/null || exit 1
    fi
    echo "receiver: created a development console operator 'dev' ($users_file, mode 0600)" >&2
  fi
  export RECEIVER_ADMIN_USERS_FILE="$users_file"
  admin_addr="${RECEIVER_ADMIN_ADDR-127.0.0.1:8081}"
  if [ -n "$admin_addr" ]; then
    echo "receiver: console at http://$admin_addr/ ; sign in with the token in $token_file" >&2
  fi
fi
