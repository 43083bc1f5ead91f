#!/usr/bin/env bash
# First start: initialise /var/lib/mysql, set the root password, create MARIADB_DATABASE and MARIADB_USER,
# run /docker-entrypoint-initdb.d/*.sql and *.sh. Secrets go to the server on stdin, never on a command line.
set -euo pipefail

# MARIADB_X, else MYSQL_X, else the contents of the file named by MARIADB_X_FILE or MYSQL_X_FILE.
read_setting() {
    local name=$1 value="" file=""
    value=${!name:-}
    [ -n "$value" ] || value=$(eval "printf '%s' \"\${MYSQL_${name#MARIADB_}:-}\"")
    file=$(eval "printf '%s' \"\${${name}_FILE:-\${MYSQL_${name#MARIADB_}_FILE:-}}\"")
    if [ -z "$value" ] && [ -n "$file" ]; then
        value=$(<"$file")
    fi
    printf '%s' "$value"
}

sql_string() {
    local escaped=${1//\\/\\\\}
    printf "'%s'" "${escaped//\'/\\\'}"
}

if [ "${1:0:1}" = "-" ]; then
    set -- mariadbd "$@"
fi

if [ "$1" = "mariadbd" ] && [ ! -d /var/lib/mysql/mysql ]; then
    root_password=$(read_setting MARIADB_ROOT_PASSWORD)
    allow_empty=$(read_setting MARIADB_ALLOW_EMPTY_ROOT_PASSWORD)
    database=$(read_setting MARIADB_DATABASE)
    user=$(read_setting MARIADB_USER)
    password=$(read_setting MARIADB_PASSWORD)
    if [ -z "$root_password" ] && [ "$allow_empty" != "yes" ] && [ "$allow_empty" != "1" ]; then
        echo "error: database is uninitialised and MARIADB_ROOT_PASSWORD is not set" \
            "(or MARIADB_ROOT_PASSWORD_FILE, or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD=yes)" >&2
        exit 1
    fi
    echo "initialising /var/lib/mysql"
    mariadb-install-db --datadir=/var/lib/mysql --skip-test-db --auth-root-authentication-method=normal \
        --skip-name-resolve >/dev/null
    "$@" --skip-networking --socket=/run/mysqld/init.sock &
    server=$!
    for _ in $(seq 60); do
        mariadb-admin --socket=/run/mysqld/init.sock --user=root ping >/dev/null 2>&1 && break
        sleep 1
    done
    {
        echo "SET @@SESSION.SQL_LOG_BIN=0;"
        # Anonymous users, and root@<container hostname>, which skip-name-resolve could never match (and which
        # SHOW CREATE USER, so mariadb-dump --system=users, then cannot read).
        echo "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost');"
        echo "ALTER USER 'root'@'localhost' IDENTIFIED BY $(sql_string "$root_password");"
        echo "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "$root_password");"
        echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
        if [ -n "$database" ]; then
            echo "CREATE DATABASE IF NOT EXISTS \`$database\`;"
        fi
        if [ -n "$user" ] && [ -n "$password" ]; then
            echo "CREATE USER $(sql_string "$user")@'%' IDENTIFIED BY $(sql_string "$password");"
            if [ -n "$database" ]; then
                echo "GRANT ALL ON \`$database\`.* TO $(sql_string "$user")@'%';"
            fi
        fi
        echo "FLUSH PRIVILEGES;"
    } | mariadb --socket=/run/mysqld/init.sock --user=root
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) echo "running $script"; MYSQL_PWD=$root_password mariadb --socket=/run/mysqld/init.sock \
                --user=root ${database:+"$database"} <"$script" ;;
            *.sh)
                echo "running $script"
                # shellcheck source=/dev/null
                . "$script"
                ;;
        esac
    done
    MYSQL_PWD=$root_password mariadb-admin --socket=/run/mysqld/init.sock --user=root shutdown
    wait "$server"
    echo "initialised; starting the server"
fi

exec "$@"
