#!/usr/bin/env bash
# Runs the IPVS balancer's real-kernel test (TestKernel in ingress/ipvs)
# inside a minimal VM: a Debian cloud kernel booted under
# qemu-system-x86_64 -accel tcg with an initramfs that holds busybox, the
# ip_vs modules and the static test binary. See README.md next to this file.
#
# Exit status: the test binary's exit status; 1 if the VM did not report
# one, or if the kernel test skipped or did not run; 0 with "SKIP: ..." if
# the tools are missing and cannot be installed (1 instead when
# SHOAL_VMTEST_REQUIRED=1).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/shoal-vmtest
run_pattern=${SHOAL_VMTEST_RUN:-TestKernel}
# tcg works everywhere (no /dev/kvm needed); set SHOAL_VMTEST_ACCEL=kvm to go faster.
accel=${SHOAL_VMTEST_ACCEL:-tcg}
boot_timeout=${SHOAL_VMTEST_TIMEOUT:-300}
# The scheduler modules the tests use: rr is the balancer's, wlc is the
# "foreign" service TestKernel creates. Their dependencies are added below.
want_modules=(ip_vs ip_vs_rr ip_vs_wlc)

log() { echo "vmtest: $*" >&2; }

skip() {
  if [ "${SHOAL_VMTEST_REQUIRED:-0}" = 1 ]; then
    echo "FAIL: $* (SHOAL_VMTEST_REQUIRED=1)" >&2
    exit 1
  fi
  echo "SKIP: $*"
  exit 0
}

find_busybox() {
  local b
  for b in /bin/busybox /usr/bin/busybox; do
    # Only a static busybox works in an initramfs with no libc.
    if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then
      echo "$b"; return 0
    fi
  done
  return 1
}

missing_tools() {
  local t
  for t in qemu-system-x86_64 cpio gzip xz zstd timeout dpkg-deb apt-get go; do
    command -v "$t" >/dev/null || echo "$t"
  done
  find_busybox >/dev/null || echo "busybox(static)"
}

# --- 1. tools --------------------------------------------------------------
if [ -n "$(missing_tools)" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing qemu-system-x86 cpio busybox-static xz-utils zstd"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends qemu-system-x86 cpio busybox-static xz-utils zstd >/dev/null 2>&1; then
      apt-get update -qq >/dev/null 2>&1 || true
      apt-get install -y -qq --no-install-recommends qemu-system-x86 cpio busybox-static xz-utils zstd >/dev/null 2>&1 || true
    fi
  fi
fi
missing=$(missing_tools | tr '\n' ' ')
[ -z "$missing" ] || skip "missing tools: ${missing}(install qemu-system-x86 cpio busybox-static xz-utils zstd, or run as root with apt-get)"
busybox=$(find_busybox)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$cache"

# --- 2. kernel and modules (cached per kernel package) ---------------------
# apt-get download warns when the _apt user cannot write the directory; the
# download still works, so the warning is filtered out below.
apt_download() {
  (cd "$1" && apt-get download -qq "$2" 2>&1 | grep -v "couldn't be accessed by user '_apt'" >&2 || true)
  ls "$1"/"$2"_*.deb >/dev/null 2>&1
}

kpkg=""
mkdir -p "$tmp/meta"
if apt_download "$tmp/meta" linux-image-cloud-amd64; then
  # Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
  kpkg=$(dpkg-deb -f "$tmp"/meta/linux-image-cloud-amd64_*.deb Depends |
    tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*-cloud-amd64' | head -n1)
fi
if [ -z "$kpkg" ]; then
  # Offline: reuse the last kernel prepared, if any.
  [ -f "$cache/current" ] || skip "cannot download linux-image-cloud-amd64 and nothing is cached in $cache"
  kpkg=$(cat "$cache/current")
  log "could not resolve linux-image-cloud-amd64; using cached $kpkg"
fi
kdir="$cache/$kpkg"

if [ ! -f "$kdir/ready" ]; then
  log "preparing $kpkg in $kdir"
  rm -rf "$kdir"
  mkdir -p "$tmp/deb" "$tmp/x" "$kdir.part/modules"
  apt_download "$tmp/deb" "$kpkg" || { echo "FAIL: apt-get download $kpkg failed" >&2; exit 1; }
  dpkg-deb -x "$tmp"/deb/"$kpkg"_*.deb "$tmp/x"
  cp "$tmp"/x/boot/vmlinuz-* "$kdir.part/vmlinuz"
  moddir=$(echo "$tmp"/x/lib/modules/*/kernel)
  [ -d "$moddir" ] || { echo "FAIL: no lib/modules/<ver>/kernel in $kpkg" >&2; exit 1; }

  # The package ships no modules.dep (depmod writes it on install), so the
  # dependency order comes from each module's own .modinfo "depends=" and
  # "softdep=pre:" entries, dependencies first.
  declare -A seen=()
  order=()
  modfile() { # module name -> path of its .ko* file (names use _ or -)
    local n=$1 alt=${1//_/-} f
    f=$(find "$moddir" \( -name "$n.ko" -o -name "$n.ko.*" -o -name "$alt.ko" -o -name "$alt.ko.*" \) -print -quit)
    [ -n "$f" ] && echo "$f"
  }
  decompress() { # $1 source .ko*, $2 destination .ko
    case "$1" in
      *.ko.xz) xz -dc "$1" >"$2" ;;
      *.ko.zst) zstd -qdc "$1" >"$2" ;;
      *.ko.gz) gzip -dc "$1" >"$2" ;;
      *.ko) cp "$1" "$2" ;;
      *) echo "FAIL: unknown module format $1" >&2; exit 1 ;;
    esac
  }
  resolve() {
    local n=$1 f deps d
    [ -z "${seen[$n]:-}" ] || return 0
    seen[$n]=1
    f=$(modfile "$n") || true
    if [ -z "$f" ]; then
      # Not a module file: built in (modules.builtin) or an alias such as
      # libcrc32c's softdep "crc32c", which this kernel builds in.
      log "  $n: no module file (built in or alias), skipped"
      return 0
    fi
    decompress "$f" "$kdir.part/modules/$n.ko"
    deps=$(tr '\0' '\n' <"$kdir.part/modules/$n.ko" |
      sed -n -e 's/^depends=//p' -e 's/^softdep=.*pre: *\([^:]*\)\( post:.*\)\{0,1\}$/\1/p' | tr ', ' '\n\n')
    for d in $deps; do
      resolve "${d//-/_}"
    done
    order+=("$n")
  }
  for m in "${want_modules[@]}"; do resolve "$m"; done
  printf '%s\n' "${order[@]}" >"$kdir.part/modules/order"
  log "modules in load order: ${order[*]}"
  touch "$kdir.part/ready"
  mv "$kdir.part" "$kdir"
  echo "$kpkg" >"$cache/current"
fi

# --- 3. static test binary -------------------------------------------------
log "building the static test binary"
(cd "$repo" && CGO_ENABLED=0 go test -c -o "$tmp/ipvs.test" ./ingress/ipvs)

# --- 4. initramfs ----------------------------------------------------------
root="$tmp/root"
kver=${kpkg#linux-image-}
kmods="$root/lib/modules/$kver/kernel"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp} "$kmods"
cp "$busybox" "$root/bin/busybox"
for a in $("$busybox" --list); do
  [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
cp "$kdir"/modules/*.ko "$kdir/modules/order" "$kmods/"
cp "$tmp/ipvs.test" "$root/ipvs.test"
cat >"$root/init" <<EOF
#!/bin/sh
export PATH=/bin HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
ip link set lo up
# modules.dep lets "modprobe ip_vs" (which github.com/moby/ipvs runs) succeed.
depmod
for m in \$(cat /lib/modules/$kver/kernel/order); do
  insmod /lib/modules/$kver/kernel/\$m.ko || echo "SHOAL-VMTEST-INSMOD-FAILED=\$m"
done
echo "SHOAL-VMTEST-KERNEL=\$(uname -r)"
cd /tmp
/ipvs.test -test.v -test.timeout 240s -test.run '$run_pattern'
echo "SHOAL-VMTEST-EXIT=\$?"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$tmp/initramfs.gz"

# --- 5. boot ---------------------------------------------------------------
log "booting $kpkg under qemu -accel $accel (timeout ${boot_timeout}s)"
start=$(date +%s)
set +e
timeout "$boot_timeout" qemu-system-x86_64 -accel "$accel" -m 512 -smp 1 \
  -nographic -no-reboot -monitor none -serial stdio -nic none \
  -kernel "$kdir/vmlinuz" -initrd "$tmp/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1" </dev/null 2>&1 |
  tr -d '\r' | tee "$tmp/console.log"
qrc=${PIPESTATUS[0]}
set -e
log "VM ran for $(($(date +%s) - start))s (qemu exit $qrc)"

out="$tmp/console.log"
if grep -q '^SHOAL-VMTEST-INSMOD-FAILED=' "$out"; then
  echo "FAIL: module load failed in the VM: $(grep '^SHOAL-VMTEST-INSMOD-FAILED=' "$out" | cut -d= -f2 | tr '\n' ' ')" >&2
  exit 1
fi
code=$(sed -n 's/^SHOAL-VMTEST-EXIT=\([0-9]*\)$/\1/p' "$out" | tail -n1)
if [ -z "$code" ]; then
  echo "FAIL: the VM reported no test exit status (qemu exit $qrc; 124 means the ${boot_timeout}s timeout)" >&2
  exit 1
fi
if grep -q -- '--- SKIP' "$out"; then
  echo "FAIL: a kernel test skipped inside the VM, so IPVS was not exercised:" >&2
  grep -B2 -- '--- SKIP' "$out" >&2
  exit 1
fi
if ! grep -q -- '^--- PASS: TestKernel\|^--- FAIL: TestKernel' "$out"; then
  echo "FAIL: no TestKernel result in the VM output (pattern '$run_pattern' ran nothing?)" >&2
  exit 1
fi
if [ "$code" = 0 ]; then
  echo "PASS: IPVS kernel tests passed in the VM ($kpkg)"
else
  echo "FAIL: IPVS kernel tests exited $code in the VM ($kpkg)"
fi
exit "$code"
