#!/usr/bin/env bash
# Start a single-node SLURM on localhost (Debian slurm-wlm 22.05 + munge + slurmdbd/MariaDB)
# with one fake GPU, for testing `snakemake --profile slurm` with real sbatch and job states.
# Needs root. Daemons run in the foreground under setsid; their PIDs go to $STATE/pids so
# stop.sh ends exactly them. Every setting below answers a pitfall met on these machines.
#
#   scripts/local-slurm/start.sh        # install if needed, configure, start, wait until idle
#   scripts/local-slurm/stop.sh
set -euo pipefail

STATE=${UDIT_SLURM_STATE:-/var/tmp/udit-local-slurm}     # logs, spool, pids
PARTITION=main           # the slurm profile's default slurm_partition
DB_PORT=3307             # own MariaDB port, bound to 127.0.0.1 only
CLUSTER=udit-local
MUNGE_SOCKET_DIR=/run/munge

if [ "$(id -u)" -ne 0 ]; then echo "start.sh: must run as root" >&2; exit 1; fi
if [ -s "$STATE/pids" ]; then
    alive=0; while read -r _ pid; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done < "$STATE/pids"
    if [ "$alive" -eq "$(wc -l < "$STATE/pids")" ] && scontrol ping >/dev/null 2>&1; then
        echo "local SLURM already running (pids in $STATE/pids)"; exit 0
    fi
    echo "start.sh: stale daemons recorded; stopping them first" >&2
    "$(dirname "$0")/stop.sh"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{log,spool/ctld,spool/d,db,run}
: > "$STATE/pids"
start_daemon() {  # name, command...: run in the foreground under setsid, record the PID
    local name=$1; shift
    setsid nohup "$@" > "$STATE/log/$name.out" 2>&1 < /dev/null &
    echo "$name $!" >> "$STATE/pids"
}
wait_for() {  # seconds, description, command...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$((seconds * 5))"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "start.sh: $what did not come up; logs in $STATE/log" >&2; exit 1
}

# munge: key once; socket folder must be 0755 ("Socket is inaccessible" otherwise)
mkdir -p /etc/munge "$MUNGE_SOCKET_DIR" /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge "$MUNGE_SOCKET_DIR" 2>/dev/null || true
chmod 0400 /etc/munge/munge.key; chmod 0755 "$MUNGE_SOCKET_DIR"
start_daemon munged runuser -u munge -- munged --foreground --force
wait_for 10 munged munge -n

# MariaDB for slurmdbd: the slurm executor plugin polls sacct, which hangs silently
# without real accounting (local-slurm notes, pitfall 1)
if [ ! -d "$STATE/db/mysql" ]; then
    mariadb-install-db --user=root --datadir="$STATE/db" --auth-root-authentication-method=socket >/dev/null
fi
start_daemon mariadbd mariadbd --user=root --datadir="$STATE/db" --port=$DB_PORT --bind-address=127.0.0.1 \
    --socket="$STATE/run/mysqld.sock" --pid-file="$STATE/run/mysqld.pid" --skip-log-error
wait_for 30 mariadbd mariadb --socket="$STATE/run/mysqld.sock" -e "select 1"
mariadb --socket="$STATE/run/mysqld.sock" -e "create database if not exists slurm_acct_db;
  create user if not exists 'slurm'@'127.0.0.1' identified by 'slurm';
  grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1'; flush privileges;"

HOST=$(hostname -s)
read -r CPUS SOCKETS CORES THREADS MEM < <(slurmd -C | awk '
    /NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["SocketsPerBoard"] ? v["SocketsPerBoard"] : 1, v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"] }')
REAL_MEM=$((MEM * 95 / 100))
mkdir -p /etc/slurm
cat > "$STATE/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET_DIR/munge.socket.2
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
CONF
chmod 600 "$STATE/slurmdbd.conf"
cat > "$STATE/slurm.conf" <<CONF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET_DIR/munge.socket.2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePass=$MUNGE_SOCKET_DIR/munge.socket.2
JobAcctGatherType=jobacct_gather/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS Sockets=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$REAL_MEM Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000
CONF
# one fake GPU for scheduling tests: jobs asking --gpus=1 get CUDA_VISIBLE_DEVICES=0
cat > "$STATE/gres.conf" <<CONF
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null Count=1
CONF
# srun inside a job never sees SLURM_CONF (the plugin strips SLURM_*): use the default path
for f in slurm.conf gres.conf slurmdbd.conf; do ln -sf "$STATE/$f" "/etc/slurm/$f"; done

start_daemon slurmdbd slurmdbd -D
wait_for 30 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true      # before slurmctld registers
start_daemon slurmctld slurmctld -D -i
wait_for 30 slurmctld scontrol ping
start_daemon slurmd slurmd -D
wait_for 30 "node $HOST idle" bash -c "sinfo -h -N -o '%T' | grep -qx idle"
echo "local SLURM up: node $HOST, partition $PARTITION, $CPUS CPUs, ${REAL_MEM} MB, gpu:1 (fake); state in $STATE"
