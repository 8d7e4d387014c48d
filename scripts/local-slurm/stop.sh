#!/usr/bin/env bash
# Stop the daemons scripts/local-slurm/start.sh started, by the PIDs it recorded (reverse order).
set -uo pipefail
STATE=${UDIT_SLURM_STATE:-/var/tmp/udit-local-slurm}
if [ ! -s "$STATE/pids" ]; then echo "stop.sh: nothing recorded in $STATE/pids"; exit 0; fi
tac "$STATE/pids" | while read -r name pid; do
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        echo "stopped $name ($pid)"
    fi
done
: > "$STATE/pids"
