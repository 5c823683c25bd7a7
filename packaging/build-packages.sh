#!/usr/bin/env bash
# Builds target/package/strongroom_<ver>-<rev>_amd64.deb and
# target/package/strongroom-<ver>-1.x86_64.rpm from the release binaries.
#   DEB_REVISION=2 bash packaging/build-packages.sh   # a bumped package (upgrade tests)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VER=3.8.0
CARGO_RPM_VER=0.21.1
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked "cargo-deb@$CARGO_DEB_VER"
command -v cargo-generate-rpm >/dev/null 2>&1 || cargo install --locked "cargo-generate-rpm@$CARGO_RPM_VER"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
revision=${DEB_REVISION:-1}
out=target/package
mkdir -p "$out/bin" target/man

# Stripped copies of the release binaries (symbols are not needed to run).
for b in strongroomd strongroomctl; do
    install -m 0755 "target/release/$b" "$out/bin/$b"
    strip --strip-unneeded "$out/bin/$b"
done
for m in strongroomd strongroomctl; do
    # gzip for Debian, bzip2 for RPM (each distribution's convention).
    gzip -9n -c "packaging/man/$m.8" > "target/man/$m.8.gz"
    bzip2 -9 -c "packaging/man/$m.8" > "target/man/$m.8.bz2"
done

cargo deb --no-build --no-strip --deb-version "$version-$revision" -o "$out/strongroom_${version}-${revision}_amd64.deb"
if [ "$revision" = 1 ]; then
    cargo generate-rpm -o "$out/strongroom-$version-1.x86_64.rpm"
fi
ls -l "$out"/*.deb "$out"/*.rpm 2>/dev/null
