#!/usr/bin/env bash
# Install (or upgrade) the moonwatch agent on this server, as root. Safe to run again: it never
# overwrites the config or the secrets, and reinstalls the package and the unit.
#
#   scripts/install.sh [--dry-run] [--config FILE] [--python PYTHON]
#
#   --dry-run      print what would be done, change nothing
#   --config FILE  install FILE as /etc/moonwatch/cluster.yml (replacing the one there)
#   --python PY    the Python 3.11 interpreter for the virtualenv (default: python3.11)
set -euo pipefail

readonly SERVICE_USER=moonwatch
readonly PREFIX=/opt/moonwatch
readonly VENV=$PREFIX/venv
readonly ETC=/etc/moonwatch
readonly STATE=/var/lib/moonwatch
readonly UNIT_DIR=/etc/systemd/system
readonly UNIT=moonwatch-agent.service

SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly SOURCE
DRY_RUN=0
CONFIG=""
PYTHON=python3.11

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "$0"
}

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --config)
            [[ $# -ge 2 ]] || { usage >&2; exit 2; }
            CONFIG=$2
            shift
            ;;
        --python)
            [[ $# -ge 2 ]] || { usage >&2; exit 2; }
            PYTHON=$2
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# Run a command, or only show it with --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Write stdin to PATH with MODE and OWNER:GROUP, unless PATH exists (never replace a secret).
write_new() {
    local mode=$1 owner=$2 path=$3
    if [[ -e $path ]]; then
        echo "keep $path (exists)"
        cat >/dev/null
        return
    fi
    if ((DRY_RUN)); then
        echo "+ write $path (mode $mode, owner $owner)"
        cat >/dev/null
        return
    fi
    local tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chown "$owner" "$tmp"
    chmod "$mode" "$tmp"
    mv "$tmp" "$path"
    echo "wrote $path"
}

random_secret() {
    "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))'
}

config_template() {
    cat <<'YAML'
# moonwatch cluster config: the same file on every server (secrets and data_dir may differ).
# Edit it, then check it with: /opt/moonwatch/venv/bin/moonwatch check-config /etc/moonwatch/cluster.yml
# Every key is described in the cluster.yml of the moonwatch repository.
cluster: prod
base_domain: example.com
data_dir: /var/lib/moonwatch
secrets:
  raft_password_file: secrets/raft_password
  api_token_file: secrets/api_token
servers:
  - {name: m1, host: 10.0.0.11, agent_port: 7101, raft_port: 7201, edge_port: 7301, app_port: 7410, role: active, domain: rack-a}
  - {name: m2, host: 10.0.0.12, agent_port: 7101, raft_port: 7201, edge_port: 7301, app_port: 7410, role: active, domain: rack-b}
  - {name: m3, host: 10.0.0.13, agent_port: 7101, raft_port: 7201, edge_port: 7301, app_port: 7410, role: active, domain: rack-c}
  - {name: m4, host: 10.0.0.14, agent_port: 7101, raft_port: 7201, edge_port: 7301, app_port: 7410, role: spare, domain: rack-a}
voters: [m1, m2, m3]
slots:
  - {name: s1, owner: m1, tenants: [acme]}
  - {name: s2, owner: m2, tenants: [globex]}
  - {name: s3, owner: m3, tenants: [initech]}
YAML
}

main() {
    if ((!DRY_RUN)) && ((EUID != 0)); then
        echo "install.sh: run as root (or try --dry-run)" >&2
        exit 2
    fi
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "install.sh: $PYTHON not found (give another with --python)" >&2
        exit 2
    fi
    if [[ -n $CONFIG && ! -r $CONFIG ]]; then
        echo "install.sh: cannot read $CONFIG" >&2
        exit 2
    fi

    echo "== user $SERVICE_USER"
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        echo "keep user $SERVICE_USER (exists)"
    else
        run useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "moonwatch agent" "$SERVICE_USER"
    fi

    echo "== $VENV"
    if [[ -x $VENV/bin/python ]]; then
        echo "keep virtualenv $VENV (exists)"
    else
        run install -d -m 0755 "$PREFIX"
        run "$PYTHON" -m venv "$VENV"
    fi
    run "$VENV/bin/python" -m pip install --quiet --upgrade pip
    run "$VENV/bin/python" -m pip install --quiet --upgrade "$SOURCE"
    run install -d -m 0755 "$PREFIX/docs"
    run install -m 0644 "$SOURCE/docs/operations.md" "$PREFIX/docs/operations.md"

    echo "== $ETC"
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC" "$ETC/secrets"
    random_secret | write_new 0640 "root:$SERVICE_USER" "$ETC/secrets/raft_password"
    random_secret | write_new 0640 "root:$SERVICE_USER" "$ETC/secrets/api_token"
    if [[ -n $CONFIG ]]; then
        run install -m 0640 -o root -g "$SERVICE_USER" "$CONFIG" "$ETC/cluster.yml"
    else
        config_template | write_new 0640 "root:$SERVICE_USER" "$ETC/cluster.yml"
    fi
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE"

    echo "== $UNIT"
    run install -m 0644 "$SOURCE/scripts/systemd/$UNIT" "$UNIT_DIR/$UNIT"
    if [[ -d /run/systemd/system ]]; then
        run systemctl daemon-reload
    else
        echo "systemd is not running here: skipped systemctl daemon-reload"
    fi

    next_steps
}

next_steps() {
    cat <<EOF

Next steps:
  1. Make $ETC/cluster.yml the cluster's config (the same on every server), and give every
     server the same $ETC/secrets/raft_password and api_token (copy them from the first).
  2. Check it:   $VENV/bin/moonwatch check-config $ETC/cluster.yml
  3. If this server's name in the config is not its host name ($(hostname)), set it:
       systemctl edit $UNIT      # see the comment at the top of the unit
  4. Start it (voters first, see $PREFIX/docs/operations.md):
       systemctl enable --now $UNIT
  5. Watch it:   systemctl status $UNIT; journalctl -u $UNIT -f; $VENV/bin/moonwatch status --config $ETC/cluster.yml
EOF
}

main
