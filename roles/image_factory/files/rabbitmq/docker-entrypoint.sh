#!/bin/sh
# Turns the official image's variables into RabbitMQ configuration before the server starts.
set -eu
if [ -n "${RABBITMQ_DEFAULT_USER:-}" ] && [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
    umask 077
    {
        echo "default_user = ${RABBITMQ_DEFAULT_USER}"
        echo "default_pass = ${RABBITMQ_DEFAULT_PASS}"
        echo "default_vhost = ${RABBITMQ_DEFAULT_VHOST:-/}"
    } >/etc/rabbitmq/conf.d/10-mooring-defaults.conf
fi
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
    umask 077
    [ ! -f /var/lib/rabbitmq/.erlang.cookie ] || chmod 0600 /var/lib/rabbitmq/.erlang.cookie
    printf '%s' "$RABBITMQ_ERLANG_COOKIE" >/var/lib/rabbitmq/.erlang.cookie
    chmod 0400 /var/lib/rabbitmq/.erlang.cookie
fi
exec "$@"
