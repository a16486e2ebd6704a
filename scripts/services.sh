#!/usr/bin/env bash
# Local, Docker-free integration-test services for dicomflow:
#   * Apache Kafka 4.x   (KRaft, single combined broker+controller) from Maven Central
#   * Elasticsearch 8.x  (integ-test-zip distribution)             from Maven Central
#   * versitygw          (Apache-2.0 S3 gateway, posix backend)     from the Go module proxy
#
# usage: scripts/services.sh COMMAND [SERVICE...]
#   up     [svc...]   fetch (cached) + start + wait healthy; writes <repo>/.services.env
#   down   [svc...]   stop (TERM the process group, wait, then KILL)
#   start  [svc...]   alias of up            stop [svc...]   alias of down
#   restart [svc...]  down then up (data directories are kept)
#   status [svc...]   print state; exit 0 if all named services are healthy, 3 otherwise
#   fetch  [svc...]   only download/build into the cache
#   logs   SVC [N]    tail the service's logs
#   env               print the path of the env file (after `up`)
#   clean             down + delete all service data (not the download cache)
# SERVICE is one of: kafka elasticsearch s3 (aliases: es, minio, versitygw). Default: all.
#
# Environment (all optional):
#   DICOMFLOW_SERVICES_CACHE   download/build cache   (default ~/.cache/dicomflow-services)
#   DICOMFLOW_SERVICES_DIR     data, logs, pid files  (default <repo>/.services)
#   DICOMFLOW_SERVICES_ENV_FILE                       (default <repo>/.services.env)
#   DICOMFLOW_SERVICES_TIMEOUT seconds to wait for each service to become healthy (default 240)
#   DICOMFLOW_KAFKA_VERSION, DICOMFLOW_ES_VERSION, DICOMFLOW_VERSITYGW_VERSION
#   DICOMFLOW_KAFKA_PORT (9092), DICOMFLOW_KAFKA_CONTROLLER_PORT (9093),
#   DICOMFLOW_ES_PORT (9200), DICOMFLOW_ES_TRANSPORT_PORT (9300), DICOMFLOW_S3_PORT (9000)
#   DICOMFLOW_KAFKA_JAVA_HOME, DICOMFLOW_ES_JAVA_HOME  (JDK used by each server)
#   DICOMFLOW_KAFKA_HEAP (-Xms256m -Xmx512m), DICOMFLOW_ES_HEAP (-Xms512m -Xmx512m)
#   DICOMFLOW_ES_USER (dicomflow-es): system user Elasticsearch runs as when invoked as root
set -euo pipefail

# ----------------------------------------------------------------------------- settings
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
HELPERS="$SCRIPT_DIR/services"

CACHE="${DICOMFLOW_SERVICES_CACHE:-${HOME:-/root}/.cache/dicomflow-services}"
SDIR="${DICOMFLOW_SERVICES_DIR:-$REPO_DIR/.services}"
ENV_FILE="${DICOMFLOW_SERVICES_ENV_FILE:-$REPO_DIR/.services.env}"
TIMEOUT="${DICOMFLOW_SERVICES_TIMEOUT:-240}"

KAFKA_VERSION="${DICOMFLOW_KAFKA_VERSION:-4.4.0}"
ES_VERSION="${DICOMFLOW_ES_VERSION:-8.19.21}"
VERSITYGW_VERSION="${DICOMFLOW_VERSITYGW_VERSION:-v1.8.0}"

BIND=127.0.0.1
KAFKA_PORT="${DICOMFLOW_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${DICOMFLOW_KAFKA_CONTROLLER_PORT:-9093}"
ES_PORT="${DICOMFLOW_ES_PORT:-9200}"
ES_TRANSPORT_PORT="${DICOMFLOW_ES_TRANSPORT_PORT:-9300}"
S3_PORT="${DICOMFLOW_S3_PORT:-9000}"
S3_REGION=us-east-1
# test-only credentials (loopback server, throwaway data)
S3_ACCESS_KEY=dicomflow-test-access
S3_SECRET_KEY=dicomflow-test-secret-key

KAFKA_HEAP="${DICOMFLOW_KAFKA_HEAP:--Xms256m -Xmx512m}"
ES_HEAP="${DICOMFLOW_ES_HEAP:--Xms512m -Xmx512m}"
ES_USER="${DICOMFLOW_ES_USER:-dicomflow-es}"

ALL_SERVICES=(kafka elasticsearch s3)

log() { echo "[services] $*"; }
die() { echo "[services] ERROR: $*" >&2; exit 1; }
now() { date +%s; }

# ----------------------------------------------------------------------------- prerequisites
APT_UPDATED=0
apt_install() {
  # apt_install PKG...  (root only; `apt-get update` at most once per run)
  [ "$(id -u)" -eq 0 ] || die "missing packages ($*): install them or run as root"
  command -v apt-get >/dev/null || die "missing packages ($*) and no apt-get"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_cmds() {
  # need_cmds cmd:debian-pkg ...
  local missing=() spec
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
  done
  [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
}

java_major() { # java_major JAVA_HOME -> prints major version
  "$1/bin/java" -XshowSettings:properties -version 2>&1 |
    sed -n 's/^ *java\.specification\.version = //p' | head -n1 | sed 's/^1\.//'
}

find_jdk() {
  # find_jdk MIN_MAJOR [preferred JAVA_HOME...]; prints a JDK home with javac, major >= MIN
  local min="$1"; shift
  local cands=("$@")
  [ -n "${JAVA_HOME:-}" ] && cands+=("$JAVA_HOME")
  if command -v javac >/dev/null 2>&1; then
    cands+=("$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")")
  fi
  local d
  for d in /usr/lib/jvm/*; do cands+=("$d"); done
  for d in "${cands[@]}"; do
    [ -n "$d" ] && [ -x "$d/bin/java" ] || continue
    local m; m="$(java_major "$d")"
    [ -n "$m" ] && [ "$m" -ge "$min" ] 2>/dev/null && { echo "$d"; return 0; }
  done
  return 1
}

kafka_java_home() {
  if [ -n "${DICOMFLOW_KAFKA_JAVA_HOME:-}" ]; then echo "$DICOMFLOW_KAFKA_JAVA_HOME"; return; fi
  find_jdk 17 /usr/lib/jvm/java-17-openjdk-amd64 && return 0
  need_cmds javac:openjdk-17-jdk-headless
  find_jdk 17 || die "no JDK >= 17 found for Kafka"
}

es_java_home() {
  # ES 8.19 runs on Java 17+; Java 21 (the LTS it is tested most on) or newer preferred.
  if [ -n "${DICOMFLOW_ES_JAVA_HOME:-}" ]; then echo "$DICOMFLOW_ES_JAVA_HOME"; return; fi
  find_jdk 21 /usr/lib/jvm/temurin-21-jdk-amd64 /usr/lib/jvm/java-21-openjdk-amd64 /usr/lib/jvm/temurin-25-jdk-amd64 && return 0
  find_jdk 17 && return 0
  need_cmds javac:openjdk-17-jdk-headless
  find_jdk 17 || die "no JDK >= 17 found for Elasticsearch"
}

mvn_fetch() { # mvn_fetch POM OUTDIR -Dprop=... ; copies the pom's dependencies into OUTDIR
  local pom="$1" out="$2"; shift 2
  command -v mvn >/dev/null 2>&1 || need_cmds mvn:maven
  mkdir -p "$CACHE/m2"
  local mlog; mlog="$CACHE/logs/mvn-$(basename "$pom" .xml).log"
  mkdir -p "$CACHE/logs"
  if ! mvn -B -q -ntp -f "$pom" -Dmaven.repo.local="$CACHE/m2" "$@" \
        dependency:copy-dependencies -DoutputDirectory="$out" -DincludeScope=runtime \
        >"$mlog" 2>&1; then
    tail -n 30 "$mlog" >&2
    die "maven could not fetch $(basename "$pom") ($*); full log: $mlog"
  fi
}

# ----------------------------------------------------------------------------- fetch
kafka_home() { echo "$CACHE/kafka-$KAFKA_VERSION"; }
es_dist() { echo "$CACHE/elasticsearch-$ES_VERSION"; }
vgw_bin() { echo "$CACHE/bin/versitygw-$VERSITYGW_VERSION"; }

fetch_kafka() {
  local home; home="$(kafka_home)"
  if [ -f "$home/.complete" ]; then log "kafka $KAFKA_VERSION: cached ($home)"; return 0; fi
  local jh; jh="$(kafka_java_home)"
  log "kafka $KAFKA_VERSION: fetching org.apache.kafka:kafka_2.13 + runtime deps from Maven Central"
  local t0; t0="$(now)"
  rm -rf "$home"; mkdir -p "$home"
  mvn_fetch "$HELPERS/kafka-pom.xml" "$home/libs" -Dkafka.version="$KAFKA_VERSION"
  [ -f "$home/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
  log "kafka $KAFKA_VERSION: compiling health probe"
  mkdir -p "$home/health"
  "$jh/bin/javac" -nowarn -d "$home/health" -cp "$home/libs/*" "$HELPERS/KafkaHealth.java"
  echo "$KAFKA_VERSION" >"$home/.complete"
  log "kafka $KAFKA_VERSION: $(find "$home/libs" -name '*.jar' | wc -l) jars, $(du -sh "$home" | cut -f1), $(( $(now) - t0 ))s"
}

fetch_elasticsearch() {
  local dist; dist="$(es_dist)"
  if [ -f "$dist/.complete" ]; then log "elasticsearch $ES_VERSION: cached ($dist)"; return 0; fi
  need_cmds unzip:unzip
  log "elasticsearch $ES_VERSION: fetching org.elasticsearch.distribution.integ-test-zip:elasticsearch:zip from Maven Central (~107 MB)"
  local tmp="$CACHE/tmp-es-$$" t0; t0="$(now)"
  rm -rf "$tmp" "$dist"; mkdir -p "$tmp"
  mvn_fetch "$HELPERS/elasticsearch-pom.xml" "$tmp/zip" -Des.version="$ES_VERSION"
  unzip -q "$tmp/zip/elasticsearch-$ES_VERSION.zip" -d "$tmp/x"
  mv "$tmp/x/elasticsearch-$ES_VERSION" "$dist"
  rm -rf "$tmp"
  # the zip is also kept in $CACHE/m2; drop that copy, the extracted tree is what we use
  rm -rf "$CACHE/m2/org/elasticsearch/distribution"
  echo "$ES_VERSION" >"$dist/.complete"
  log "elasticsearch $ES_VERSION: extracted to $dist, $(( $(now) - t0 ))s"
}

es_rest_root_dir() { # cache dir of the GET/HEAD / helper plugin, keyed by ES version + source hash
  local h; h="$(cat "$HELPERS/es-rest-root/RestRootPlugin.java" "$HELPERS/es-rest-root/plugin-descriptor.properties.in" | sha256sum | cut -c1-12)"
  echo "$CACHE/es-rest-root-$ES_VERSION-$h"
}

build_es_rest_root() {
  # GET / and HEAD / (client.info()/ping()) are not in the integ-test-zip; build the small
  # helper plugin in scripts/services/es-rest-root against the distribution's own jars.
  local out dist jh; out="$(es_rest_root_dir)"; dist="$(es_dist)"
  [ -f "$out/.complete" ] && return 0
  jh="$(es_java_home)"
  log "elasticsearch $ES_VERSION: building the dicomflow-rest-root helper plugin (GET / and HEAD /)"
  rm -rf "$out"; mkdir -p "$out/classes" "$out/plugin"
  if ! "$jh/bin/javac" --release 17 -nowarn -d "$out/classes" -cp "$dist/lib/*" \
        "$HELPERS/es-rest-root/RestRootPlugin.java" >"$out/javac.log" 2>&1 \
     || ! "$jh/bin/jar" --create --file "$out/plugin/dicomflow-rest-root.jar" -C "$out/classes" . >>"$out/javac.log" 2>&1; then
    cat "$out/javac.log" >&2
    log "WARNING: helper plugin did not build; Elasticsearch will run without GET / and HEAD /"
    rm -rf "$out/plugin"; : >"$out/.complete"; return 0
  fi
  sed "s/@ES_VERSION@/$ES_VERSION/g" "$HELPERS/es-rest-root/plugin-descriptor.properties.in" \
    >"$out/plugin/plugin-descriptor.properties"
  rm -rf "$out/classes"
  : >"$out/.complete"
}

fetch_s3() {
  local bin; bin="$(vgw_bin)"
  if [ -x "$bin" ]; then log "versitygw $VERSITYGW_VERSION: cached ($bin)"; return 0; fi
  command -v go >/dev/null 2>&1 || die "go toolchain not found (needed to build versitygw from the Go module proxy)"
  log "versitygw $VERSITYGW_VERSION: go install github.com/versity/versitygw/cmd/versitygw (Go module proxy; ~2 min cold on 2 cores)"
  local gotmp="$CACHE/go-$$" glog="$CACHE/logs/go-install-versitygw.log" t0; t0="$(now)"
  mkdir -p "$CACHE/logs" "$CACHE/bin"
  rm -rf "$gotmp"
  if ! env GOBIN="$gotmp/bin" GOMODCACHE="$gotmp/mod" GOCACHE="$gotmp/build" GOPATH="$gotmp/path" \
        GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0 \
        go install -trimpath -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION" \
        "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >"$glog" 2>&1; then
    tail -n 30 "$glog" >&2
    rm -rf "$gotmp"
    die "go install versitygw@$VERSITYGW_VERSION failed; full log: $glog"
  fi
  mv "$gotmp/bin/versitygw" "$bin"
  rm -rf "$gotmp"   # module + build caches are only needed for this one build
  log "versitygw $VERSITYGW_VERSION: built $bin ($(du -h "$bin" | cut -f1)), $(( $(now) - t0 ))s"
}

fetch_services() { # fetch_services SVC...  (s3 builds in the background while maven downloads)
  local want_s3=0 s s3pid=""
  for s in "$@"; do [ "$s" = s3 ] && want_s3=1; done
  if [ "$want_s3" -eq 1 ] && [ ! -x "$(vgw_bin)" ] && [ "$#" -gt 1 ]; then
    ( fetch_s3 ) & s3pid=$!
  fi
  for s in "$@"; do
    case "$s" in
      kafka) fetch_kafka ;;
      elasticsearch) fetch_elasticsearch; build_es_rest_root ;;
      s3) [ -n "$s3pid" ] || fetch_s3 ;;
    esac
  done
  if [ -n "$s3pid" ]; then wait "$s3pid" || die "fetching versitygw failed"; fi
}

# ----------------------------------------------------------------------------- process helpers
svc_dir() { echo "$SDIR/$1"; }
pid_file() { echo "$SDIR/$1/$1.pid"; }
svc_port() {
  case "$1" in kafka) echo "$KAFKA_PORT" ;; elasticsearch) echo "$ES_PORT" ;; s3) echo "$S3_PORT" ;; esac
}
svc_logs() { # main log files of a service (for error output)
  local d; d="$(svc_dir "$1")/logs"
  case "$1" in
    kafka) echo "$d/stdout.log $d/server.log" ;;
    elasticsearch) echo "$d/stdout.log $d/dicomflow-test.log" ;;
    s3) echo "$d/stdout.log" ;;
  esac
}

svc_pid() { # prints pid if the recorded process group is alive
  local f pid; f="$(pid_file "$1")"
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null)"; [ -n "$pid" ] || return 1
  # alive, and really ours: some process of that group mentions our services dir
  # (guards against a stale pid file whose pid was reused after a reboot)
  if pgrep -g "$pid" -f -- "$SDIR" >/dev/null 2>&1; then echo "$pid"; return 0; fi
  return 1
}

port_open() { (exec 3<>"/dev/tcp/$BIND/$1") 2>/dev/null; }

show_log_tail() { # the current run's console output, then the end of the server log
  local f d; d="$(svc_dir "$1")/logs"
  if [ -s "$d/stdout.log" ]; then
    echo "----- $d/stdout.log (this start, last 40 lines)" >&2
    awk '/^=== .* started by scripts\/services.sh/{n=0; delete buf} {buf[n++]=$0} END{s=(n>40?n-40:0); for(i=s;i<n;i++) print buf[i]}' \
      "$d/stdout.log" >&2
  fi
  for f in $(svc_logs "$1"); do
    [ "$f" = "$d/stdout.log" ] && continue
    [ -s "$f" ] || continue
    echo "----- tail -n 15 $f" >&2
    tail -n 15 "$f" | cut -c1-400 >&2
  done
  echo "----- (full logs: $d)" >&2
}

launch() { # launch SVC CWD CMD...   (new session => own process group; pid == pgid)
  local svc="$1" cwd="$2"; shift 2
  local d; d="$(svc_dir "$svc")"
  mkdir -p "$d/logs"
  local cmdline="$*"
  echo "=== $(date -u +%FT%TZ) started by scripts/services.sh: ${cmdline//$S3_SECRET_KEY/***}" >>"$d/logs/stdout.log"
  (
    exec 9>&-   # never let a server inherit the lock fd of with_lock
    # Elasticsearch warns below 65535 open files; raise the soft limit as far as allowed
    ulimit -n 65535 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    cd "$cwd" && exec setsid "$@" >>"$d/logs/stdout.log" 2>&1 </dev/null
  ) &
  local pid=$!
  echo "$pid" >"$(pid_file "$svc")"
  sleep 0.2
  local pgid; pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
  if [ -n "$pgid" ] && [ "$pgid" != "$pid" ]; then
    log "warning: $svc pid $pid is not its own process group ($pgid)"
  fi
}

stop_service() {
  local svc="$1" pid
  if ! pid="$(svc_pid "$svc")"; then
    rm -f "$(pid_file "$svc")"
    log "$svc: not running"
    return 0
  fi
  log "$svc: stopping (process group $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do   # up to 60 s for a clean shutdown
    if ! kill -0 -- "-$pid" 2>/dev/null && ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  if kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; then
    log "$svc: still alive after 60 s, sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  # the port must be free before a restart can bind it again
  local port; port="$(svc_port "$svc")"
  for _ in $(seq 1 40); do port_open "$port" || break; sleep 0.25; done
  rm -f "$(pid_file "$svc")"
  log "$svc: stopped"
}

check_port_free() { # refuse to start if someone else holds the port
  local svc="$1" port="$2"
  if port_open "$port"; then
    local who; who="$(ss -ltnpH "sport = :$port" 2>/dev/null | head -n 3 || true)"
    die "$svc: port $BIND:$port is already in use by a process this script did not start: ${who:-unknown}. Stop it or set DICOMFLOW_*_PORT."
  fi
}

# ----------------------------------------------------------------------------- kafka
kafka_health() {
  port_open "$KAFKA_PORT" || return 1
  local home jh d; home="$(kafka_home)"; d="$(svc_dir kafka)"
  jh="$(cat "$d/java_home" 2>/dev/null || kafka_java_home)"
  timeout 25 "$jh/bin/java" -Xmx64m -XX:TieredStopAtLevel=1 \
    -Dlog4j2.configurationFile="$HELPERS/health-log4j2.properties" \
    -cp "$home/health:$home/libs/*" KafkaHealth "$BIND:$KAFKA_PORT" >"$d/logs/health.log" 2>&1
}

start_kafka() {
  local home d jh; home="$(kafka_home)"; d="$(svc_dir kafka)"
  jh="$(kafka_java_home)"
  mkdir -p "$d/data" "$d/logs"
  echo "$jh" >"$d/java_home"
  check_port_free kafka "$KAFKA_PORT"
  check_port_free kafka-controller "$KAFKA_CONTROLLER_PORT"
  cat >"$d/server.properties" <<EOF
# generated by scripts/services.sh: single-node KRaft (combined broker+controller), loopback only
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$BIND:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$BIND:$KAFKA_PORT,CONTROLLER://$BIND:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$BIND:$KAFKA_PORT,CONTROLLER://$BIND:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
log.segment.bytes=134217728
delete.topic.enable=true
EOF
  if [ ! -f "$d/data/meta.properties" ]; then
    local cid
    if [ -s "$d/cluster-id" ]; then cid="$(cat "$d/cluster-id")"; else
      cid="$("$jh/bin/java" -cp "$home/libs/*" -Dlog4j2.configurationFile="$HELPERS/health-log4j2.properties" \
              kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
      echo "$cid" >"$d/cluster-id"
    fi
    log "kafka: formatting KRaft storage (cluster id $cid)"
    if ! "$jh/bin/java" -cp "$home/libs/*" -Dlog4j2.configurationFile="$HELPERS/health-log4j2.properties" \
          kafka.tools.StorageTool format --standalone --ignore-formatted -t "$cid" -c "$d/server.properties" \
          >"$d/logs/format.log" 2>&1; then
      cat "$d/logs/format.log" >&2
      die "kafka: storage format failed"
    fi
  fi
  log "kafka $KAFKA_VERSION: starting on $BIND:$KAFKA_PORT (controller $BIND:$KAFKA_CONTROLLER_PORT, java $(java_major "$jh"))"
  # shellcheck disable=SC2086
  launch kafka "$d" "$jh/bin/java" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dkafka.logs.dir="$d/logs" -Dlog4j2.configurationFile="$HELPERS/kafka-log4j2.properties" \
    -cp "$home/libs/*" kafka.Kafka "$d/server.properties"
}

# ----------------------------------------------------------------------------- elasticsearch
as_es_user() { # run a command as the ES user (or as ourselves when not root)
  if [ "$(id -u)" -eq 0 ]; then
    setpriv --reuid="$ES_USER" --regid="$ES_USER" --init-groups "$@"
  else
    "$@"
  fi
}

ensure_es_user() {
  [ "$(id -u)" -eq 0 ] || return 0   # not root: ES runs as the invoking user
  need_cmds setpriv:util-linux
  if ! id -u "$ES_USER" >/dev/null 2>&1; then
    log "elasticsearch: creating system user $ES_USER (Elasticsearch refuses to run as root)"
    need_cmds useradd:passwd
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$ES_USER"
  fi
}

ensure_traversable() { # ensure_traversable PATH: let the ES user reach PATH (x on every ancestor)
  [ "$(id -u)" -eq 0 ] || return 0
  local target="$1" p="" part
  as_es_user test -x "$target" 2>/dev/null && return 0
  IFS=/ read -r -a parts <<<"${target#/}"
  for part in "${parts[@]}"; do
    p="$p/$part"
    if ! as_es_user test -x "$p" 2>/dev/null; then
      if command -v setfacl >/dev/null 2>&1 || need_cmds setfacl:acl; then
        log "elasticsearch: granting $ES_USER traverse (x) ACL on $p"
        setfacl -m "u:$ES_USER:--x" "$p"
      else
        log "elasticsearch: chmod o+x $p"
        chmod o+x "$p"
      fi
    fi
  done
  as_es_user test -x "$target" || die "elasticsearch: user $ES_USER cannot reach $target"
}

es_health() {
  curl -fsS -o /dev/null --max-time 10 \
    "http://$BIND:$ES_PORT/_cluster/health?wait_for_status=yellow&timeout=5s" 2>/dev/null
}

start_elasticsearch() {
  need_cmds curl:curl
  local dist d home jh; dist="$(es_dist)"; d="$(svc_dir elasticsearch)"
  jh="$(es_java_home)"
  ensure_es_user
  check_port_free elasticsearch "$ES_PORT"
  check_port_free elasticsearch-transport "$ES_TRANSPORT_PORT"
  mkdir -p "$d/config/jvm.options.d" "$d/data" "$d/logs" "$d/tmp"
  # ES must be readable by $ES_USER; the cache may sit under a private home (/root is 0700),
  # so the distribution is hard-linked (or copied) next to the data.
  home="$d/dist-$ES_VERSION"
  if [ ! -f "$home/.complete" ]; then
    rm -rf "$home" "$d"/dist-*
    cp -al "$dist" "$home" 2>/dev/null || { rm -rf "$home"; cp -a "$dist" "$home"; }
  fi
  # helper plugin providing GET / and HEAD / (see scripts/services/es-rest-root)
  rm -rf "$home/plugins/dicomflow-rest-root"
  if [ -d "$(es_rest_root_dir)/plugin" ]; then
    cp -r "$(es_rest_root_dir)/plugin" "$home/plugins/dicomflow-rest-root"
  fi
  # config: the distribution's files + our elasticsearch.yml / jvm options
  local f
  for f in log4j2.properties roles.yml role_mapping.yml users users_roles; do
    [ -e "$d/config/$f" ] || cp "$home/config/$f" "$d/config/$f"
  done
  sed -e "s#file=gc.log#file=$d/logs/gc.log#" \
      -e "s#filecount=32,filesize=64m#filecount=4,filesize=16m#" \
      -e "s#-XX:ErrorFile=.*#-XX:ErrorFile=$d/logs/hs_err_pid%p.log#" \
      -e "/-XX:+HeapDumpOnOutOfMemoryError/d" \
      "$home/config/jvm.options" >"$d/config/jvm.options"
  # shellcheck disable=SC2086
  printf "%s\n" $ES_HEAP >"$d/config/jvm.options.d/heap.options"
  cat >"$d/config/elasticsearch.yml" <<EOF
# generated by scripts/services.sh: single node, loopback only, test settings
cluster.name: dicomflow-test
node.name: dicomflow-test-node
path.data: $d/data
path.logs: $d/logs
network.host: $BIND
http.port: $ES_PORT
transport.port: $ES_TRANSPORT_PORT
discovery.type: single-node
xpack.security.enabled: false
# the disk may be nearly full on CI machines: never go read-only / refuse shards because of it
cluster.routing.allocation.disk.threshold_enabled: false
# tests delete indices by wildcard
action.destructive_requires_name: false
EOF
  if [ "$(id -u)" -eq 0 ]; then
    chown "$ES_USER:$ES_USER" "$d"
    chown -R "$ES_USER:$ES_USER" "$d/config" "$d/logs" "$d/tmp"
    [ "$(stat -c %U "$d/data")" = "$ES_USER" ] && [ -z "$(find "$d/data" ! -user "$ES_USER" -print -quit)" ] \
      || chown -R "$ES_USER:$ES_USER" "$d/data"
    ensure_traversable "$home/bin"
    ensure_traversable "$d/data"
    ensure_traversable "$jh/bin"
    as_es_user test -r "$home/lib/elasticsearch-$ES_VERSION.jar" \
      || die "elasticsearch: $ES_USER cannot read $home/lib"
  fi
  local mmc; mmc="$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)"
  if [ "$mmc" -lt 262144 ] && [ "$(id -u)" -eq 0 ]; then
    # only a production bootstrap check (not enforced on loopback); raise it when allowed
    if sysctl -q -w vm.max_map_count=262144 >/dev/null 2>&1; then
      log "elasticsearch: raised vm.max_map_count $mmc -> 262144 (system-wide)"
    fi
  fi
  local who="$ES_USER"; [ "$(id -u)" -eq 0 ] || who="$(id -un)"
  log "elasticsearch $ES_VERSION: starting on $BIND:$ES_PORT as user $who (java $(java_major "$jh"))"
  local runas=()
  [ "$(id -u)" -eq 0 ] && runas=(setpriv --reuid="$ES_USER" --regid="$ES_USER" --init-groups)
  launch elasticsearch "$d" "${runas[@]}" env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME="$d" LANG=C.UTF-8 \
    ES_HOME="$home" ES_JAVA_HOME="$jh" ES_PATH_CONF="$d/config" ES_TMPDIR="$d/tmp" \
    "$home/bin/elasticsearch"
}

# ----------------------------------------------------------------------------- s3 (versitygw)
xattr_ok() { # xattr_ok DIR: can we set user.* extended attributes there?
  local probe="$1/.xattr-probe-$$" rc=1
  : >"$probe"
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.dicomflow", b"1")' "$probe" 2>/dev/null && rc=0
  else
    need_cmds setfattr:attr
    setfattr -n user.dicomflow -v 1 "$probe" 2>/dev/null && rc=0
  fi
  rm -f "$probe"
  return "$rc"
}

s3_health() {
  # a SigV4-signed ListBuckets with the test credentials must return 200
  # (versitygw requires x-amz-content-sha256; this is the SHA-256 of the empty body)
  curl -fsS -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:$S3_REGION:s3" \
    --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
    -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
    "http://$BIND:$S3_PORT/" 2>/dev/null
}

start_s3() {
  need_cmds curl:curl
  local d bin; d="$(svc_dir s3)"; bin="$(vgw_bin)"
  mkdir -p "$d/data" "$d/logs"
  check_port_free s3 "$S3_PORT"
  local extra=()
  if xattr_ok "$d/data"; then
    rm -f "$d/sidecar.enabled"
  else
    # posix backend keeps object metadata in xattrs; without them use a sidecar directory
    mkdir -p "$d/meta"; : >"$d/sidecar.enabled"
    log "s3: filesystem of $d/data has no user xattr support, using versitygw --sidecar $d/meta"
  fi
  [ -f "$d/sidecar.enabled" ] && extra=(--sidecar "$d/meta")
  log "versitygw $VERSITYGW_VERSION: starting S3 on $BIND:$S3_PORT (posix backend $d/data)"
  launch s3 "$d" env ROOT_ACCESS_KEY="$S3_ACCESS_KEY" ROOT_SECRET_KEY="$S3_SECRET_KEY" \
    VGW_REGION="$S3_REGION" \
    "$bin" --port "$BIND:$S3_PORT" --quiet posix "${extra[@]}" "$d/data"
}

# ----------------------------------------------------------------------------- generic
health() {
  case "$1" in
    kafka) kafka_health ;;
    elasticsearch) es_health ;;
    s3) s3_health ;;
  esac
}

start_service() {
  local svc="$1"
  mkdir -p "$(svc_dir "$svc")"
  if svc_pid "$svc" >/dev/null; then
    log "$svc: already running (pid $(svc_pid "$svc"))"
    return 0
  fi
  rm -f "$(pid_file "$svc")"
  "start_$svc"
}

wait_healthy() {
  local svc="$1" t0 pid; t0="$(now)"
  while true; do
    if ! pid="$(svc_pid "$svc")"; then
      echo "[services] ERROR: $svc exited during startup" >&2
      show_log_tail "$svc"
      exit 1
    fi
    if health "$svc"; then
      log "$svc: healthy after $(( $(now) - t0 ))s (pid $pid)"
      return 0
    fi
    if [ $(( $(now) - t0 )) -ge "$TIMEOUT" ]; then
      echo "[services] ERROR: $svc not healthy after ${TIMEOUT}s (pid $pid still running)" >&2
      show_log_tail "$svc"
      [ "$svc" = kafka ] && [ -s "$(svc_dir kafka)/logs/health.log" ] && tail -n 5 "$(svc_dir kafka)/logs/health.log" >&2
      exit 1
    fi
    sleep 1
  done
}

write_env() {
  local tmp="$ENV_FILE.tmp.$$"
  cat >"$tmp" <<EOF
# generated by scripts/services.sh -- local test services (loopback only, test-only credentials)
# use: set -a; . ./.services.env; set +a    or: source ./.services.env
export DICOMFLOW_KAFKA_BOOTSTRAP=$BIND:$KAFKA_PORT
export DICOMFLOW_ELASTICSEARCH_URL=http://$BIND:$ES_PORT
export DICOMFLOW_S3_ENDPOINT=$BIND:$S3_PORT
export DICOMFLOW_S3_SECURE=false
export DICOMFLOW_S3_ACCESS_KEY=$S3_ACCESS_KEY
export DICOMFLOW_S3_SECRET_KEY=$S3_SECRET_KEY
export DICOMFLOW_S3_REGION=$S3_REGION
export DICOMFLOW_S3_URL=http://$BIND:$S3_PORT
export DICOMFLOW_KAFKA_VERSION=$KAFKA_VERSION
export DICOMFLOW_ELASTICSEARCH_VERSION=$ES_VERSION
export DICOMFLOW_S3_SERVER=versitygw-$VERSITYGW_VERSION
export DICOMFLOW_SERVICES_DIR=$SDIR
EOF
  mv "$tmp" "$ENV_FILE"
}

normalize() { # service-name aliases -> canonical; no args -> all
  local out=() a
  [ "$#" -eq 0 ] && set -- "${ALL_SERVICES[@]}"
  for a in "$@"; do
    case "$a" in
      kafka) out+=(kafka) ;;
      es|elastic|elasticsearch) out+=(elasticsearch) ;;
      s3|minio|versitygw) out+=(s3) ;;
      all) out+=("${ALL_SERVICES[@]}") ;;
      *) die "unknown service '$a' (use: kafka elasticsearch s3)" ;;
    esac
  done
  # de-duplicate, keep order
  local seen=" " s res=()
  for s in "${out[@]}"; do [[ "$seen" == *" $s "* ]] || { res+=("$s"); seen="$seen$s "; }; done
  echo "${res[@]}"
}

with_lock() { # serialise concurrent invocations (e.g. parallel test workers)
  mkdir -p "$SDIR"
  need_cmds flock:util-linux
  exec 9>"$SDIR/.lock"
  flock -w 900 9 || die "could not get the lock $SDIR/.lock"
}

cmd_up() {
  local svcs t0 s; read -r -a svcs <<<"$(normalize "$@")"; t0="$(now)"
  need_cmds curl:curl setsid:util-linux pgrep:procps
  with_lock
  fetch_services "${svcs[@]}"
  log "fetch done in $(( $(now) - t0 ))s"
  for s in "${svcs[@]}"; do start_service "$s"; done
  for s in "${svcs[@]}"; do wait_healthy "$s"; done
  write_env
  log "all up (${svcs[*]}) in $(( $(now) - t0 ))s; env: $ENV_FILE"
}

cmd_down() {
  local svcs s; read -r -a svcs <<<"$(normalize "$@")"
  [ -d "$SDIR" ] || { log "nothing to stop ($SDIR absent)"; return 0; }
  with_lock
  for s in "${svcs[@]}"; do stop_service "$s"; done
}

cmd_status() {
  local svcs s pid rc=0 state; read -r -a svcs <<<"$(normalize "$@")"
  for s in "${svcs[@]}"; do
    if pid="$(svc_pid "$s")"; then
      if health "$s"; then state="running, healthy"; else state="running, NOT healthy"; rc=3; fi
      printf '%-14s %-22s pid %-8s %s:%s\n' "$s" "$state" "$pid" "$BIND" "$(svc_port "$s")"
    else
      printf '%-14s %-22s\n' "$s" "stopped"; rc=3
    fi
  done
  return "$rc"
}

cmd_logs() {
  [ "$#" -ge 1 ] || die "usage: logs SERVICE [LINES]"
  local s; s="$(normalize "$1")"
  local f
  for f in $(svc_logs "$s"); do
    if [ -f "$f" ]; then echo "===== $f"; tail -n "${2:-50}" "$f"; fi
  done
}

cmd_clean() {
  cmd_down
  local s
  for s in "${ALL_SERVICES[@]}"; do rm -rf "${SDIR:?}/$s"; done
  rm -f "$ENV_FILE" "$SDIR/.lock"
  rmdir "$SDIR" 2>/dev/null || true
  log "removed service data under $SDIR"
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

main() {
  local cmd="${1:-}"; [ "$#" -gt 0 ] && shift
  case "$cmd" in
    up|start) cmd_up "$@" ;;
    down|stop) cmd_down "$@" ;;
    restart) cmd_down "$@"; cmd_up "$@" ;;
    status) cmd_status "$@" ;;
    fetch) local svcs; read -r -a svcs <<<"$(normalize "$@")"; mkdir -p "$CACHE"; fetch_services "${svcs[@]}" ;;
    logs) cmd_logs "$@" ;;
    env) [ -f "$ENV_FILE" ] && echo "$ENV_FILE" || die "no env file yet; run: $0 up" ;;
    clean) cmd_clean ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
