#!/usr/bin/env bash
# Builds the Debian package: the tidemark binary (with the migrations and the map dashboard built
# in), the systemd units, the configuration under /etc/tidemark, and the migrations, broker
# configuration and simulator scenarios for reference under /usr/share/tidemark.
#
#   scripts/package.sh                   # release build, then target/debian/tidemark_<v>_<arch>.deb
#   scripts/package.sh --binary PATH --out DIR --compression none
#
# Install with `apt install ./tidemark_<v>_<arch>.deb`, put secrets in /etc/tidemark/tidemark.env,
# then `systemctl enable --now tidemark.target`.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out=""
compression=xz
while [[ $# -gt 0 ]]; do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --compression) compression=$2; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--out DIR] [--compression xz|gzip|zstd|none]" >&2; exit 2 ;;
    esac
done

target_dir=${CARGO_TARGET_DIR:-target}
if [[ -z $binary ]]; then
    bash scripts/dashboard.sh
    cargo build --release --locked -p tidemark
    binary=$target_dir/release/tidemark
fi
out=${out:-$target_dir/debian}
[[ -x $binary ]] || { echo "$0: $binary is not an executable" >&2; exit 1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binary needs is the oldest libc6 it runs on.
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -n 1)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
install -D -m 0755 "$binary" "$root/usr/bin/tidemark"
# Debug information stays out of the package, as Debian's packages do (the release profile
# keeps it for profiling).
strip --strip-debug "$root/usr/bin/tidemark"
for unit in packaging/systemd/*; do
    install -D -m 0644 "$unit" "$root/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0644 config/default.toml "$root/etc/tidemark/tidemark.toml"
install -D -m 0600 packaging/tidemark.env "$root/etc/tidemark/tidemark.env"
cp -r config/reference config/flood "$root/etc/tidemark/"
mkdir -p "$root/usr/share/tidemark"
cp -r store/migrations config/scenarios "$root/usr/share/tidemark/"
install -m 0644 store/migrations.sha256 "$root/usr/share/tidemark/migrations/SHA256SUMS"
# The broker's production configuration, as /etc/mosquitto/conf.d/tidemark.conf expects it.
install -D -m 0644 config/mosquitto.conf "$root/usr/share/tidemark/mosquitto/tidemark.conf"
install -D -m 0644 config/mosquitto.acl "$root/usr/share/tidemark/mosquitto/tidemark.acl"
install -D -m 0644 -t "$root/usr/share/doc/tidemark" README.md ARCHITECTURE.md
find "$root/etc" "$root/usr/share" -type d -exec chmod 0755 {} +
find "$root/etc/tidemark" "$root/usr/share" -type f ! -name tidemark.env -exec chmod 0644 {} +

mkdir -p "$root/DEBIAN"
(cd "$root" && find etc -type f | sort | sed 's|^|/|') > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: tidemark
Version: $version
Architecture: $arch
Maintainer: Tidemark developers <tidemark@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: postgresql (>= 14), mosquitto
Section: net
Priority: optional
Description: IoT and green-data pipeline for flood warnings and open utility data
 Tidemark ingests water, energy and waste sensor readings from MQTT into
 PostgreSQL or TimescaleDB exactly once, raises flood warnings and delivers
 them over webhooks, Server-Sent Events, MQTT and CAP 1.2, and serves open
 data, circular-economy and utility statistics over an HTTP API.
CONTROL
# Units are installed, not started: the database URL and secrets come first.
for script in postinst postrm; do
    cat > "$root/DEBIAN/$script" <<'SCRIPT'
#!/bin/sh
set -e
# Under dpkg --root (DPKG_ROOT set) the host's systemd is not ours to reload.
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
    chmod 0755 "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/tidemark_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compression" --build "$root" "$deb" >/dev/null
echo "$deb"
