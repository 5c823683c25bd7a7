#!/usr/bin/env bash
# Package test (run by `make test-package`, and by CI):
#  1. lint the .deb (lintian) and the .rpm (rpmlint, rpm -qpl, rpm -qp --scripts);
#  2. score the units with `systemd-analyze security --offline` (strongroomd
#     must be <= 1.5, strongroom-backup <= 0.3);
#  3. install the .deb into a debootstrapped Debian 12 root (cached), boot it
#     with systemd-nspawn and check, from inside: the service is active, the
#     admin socket answers, /status shows FIPS over HTTPS, journald holds a
#     structured request line, the sealed master key is not readable by the
#     service user, `systemd-analyze verify` is clean, the backup timer is
#     enabled and a backup run snapshots and audits, and an upgrade to a
#     bumped package keeps the data and the key. The container powers itself
#     off and leaves PASS or FAIL lines behind.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2"); }
apt_missing=()
need lintian lintian
need rpm rpm
need rpmlint rpmlint
need debootstrap debootstrap
need systemd-nspawn systemd-container
need bzip2 bzip2
need dpkg-shlibdeps dpkg-dev
if [ ${#apt_missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_missing[@]}"
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
pkg=target/package
deb="$pkg/strongroom_${version}-1_amd64.deb"
deb2="$pkg/strongroom_${version}-2_amd64.deb"
rpmfile="$pkg/strongroom-$version-1.x86_64.rpm"
bash packaging/build-packages.sh >/dev/null
DEB_REVISION=2 bash packaging/build-packages.sh >/dev/null
[ -f "$deb" ] && [ -f "$deb2" ] && [ -f "$rpmfile" ]

echo "== no test-only controls in the packaged binary"
# The clock the tests move (feature test-clock) must not exist in a release.
if dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/strongroomd | grep -aq 'debug.clock_advance'; then
    echo "FAIL: the packaged strongroomd carries the test clock control" >&2
    exit 1
fi

echo "== lintian"
lintian --fail-on error,warning "$deb"

echo "== rpm"
rpm -qpl "$rpmfile"
# Read each listing whole first: `grep -q` exits at its first match, and
# under pipefail rpm's SIGPIPE would fail the pipeline.
rpm_scripts=$(rpm -qp --scripts "$rpmfile")
rpm_files=$(rpm -qpl "$rpmfile")
grep -q 'systemd-creds encrypt' <<<"$rpm_scripts"
grep -qx /usr/lib/systemd/system/strongroom-backup.service <<<"$rpm_files"
grep -qx /usr/lib/systemd/system/strongroom-backup.timer <<<"$rpm_files"
grep -q 'enable --now strongroom-backup.timer' <<<"$rpm_scripts"
grep -qx /etc/strongroom/strongroom.toml <<<"$(rpm -qp --configfiles "$rpmfile")"
grep -q '^systemd >= 250' <<<"$(rpm -qp --requires "$rpmfile")"
echo "== rpmlint"
rpmlint -r packaging/rpmlintrc "$rpmfile"

echo "== systemd-analyze security"
# Each limit is the unit's measured score (1.4, 0.2) plus 0.1.
score_unit() {
    local unit=$1 max=$2 score
    score=$(systemd-analyze security --offline=yes "systemd/$unit" 2>/dev/null |
        sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p")
    echo "$unit exposure $score (at most $max)"
    awk -v s="$score" -v m="$max" 'BEGIN { exit !(s != "" && s <= m) }'
}
score_unit strongroomd.service 1.5
score_unit strongroom-backup.service 0.3

echo "== boot test"
work=target/pkgtest
base="$work/base"
if [ ! -x "$base/usr/bin/man" ]; then
    rm -rf "$base"
    mkdir -p "$work"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,ca-certificates,python3,procps,man-db \
        bookworm "$base" http://deb.debian.org/debian
fi
root="$work/root"
rm -rf "$root" "$work/out"
cp -a "$base" "$root"
mkdir -p "$root/pkg" "$work/out"
cp "$deb" "$root/pkg/strongroom.deb"
cp "$deb2" "$root/pkg/strongroom-upgrade.deb"
install -m 0755 packaging/pkgtest/inside.sh "$root/usr/local/sbin/strongroom-pkgtest"
install -m 0644 packaging/pkgtest/strongroom-pkgtest.service "$root/etc/systemd/system/"
ln -sf /etc/systemd/system/strongroom-pkgtest.service \
    "$root/etc/systemd/system/multi-user.target.wants/strongroom-pkgtest.service"
echo pkgtest > "$root/etc/hostname"

# Install as an administrator would (not booted: the service starts at boot).
systemd-nspawn -q -D "$root" --register=no --keep-unit dpkg -i /pkg/strongroom.deb

timeout 300 systemd-nspawn -q -b -D "$root" --register=no --keep-unit \
    --bind="$PWD/$work/out:/out" >"$work/boot.log" 2>&1 || true
cat "$work/out/result" 2>/dev/null || true
if ! grep -q '^PASS all' "$work/out/result" 2>/dev/null; then
    echo "package boot test FAILED; console log: $work/boot.log" >&2
    tail -50 "$work/boot.log" >&2
    exit 1
fi
echo "package test passed"
