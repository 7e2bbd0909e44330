//! The Debian package: `scripts/package.sh` builds it around this build's binary, dpkg installs
//! it into a throwaway root, and the test checks its files, its conffiles, its units (with
//! `systemd-analyze verify`, warnings counted as failures, and the offline security review) and
//! that the installed binary migrates a fresh database with the installed configuration.

use crate::support::{repo, sql_client};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tidemark_testkit::{test_server, TestDatabase};

/// The stage units the package's target starts, and the one it may add.
const UNITS: [&str; 6] = [
    "tidemark.target",
    "tidemark-migrate.service",
    "tidemark@ingest.service",
    "tidemark@analytics.service",
    "tidemark@api.service",
    "tidemark@delivery.service",
];

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Builds the package into `dir` and installs it with dpkg into `dir/root`.
fn install(dir: &Path) -> PathBuf {
    let built = run(Command::new("bash")
        .arg(repo("scripts/package.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_tidemark")])
        .arg("--out")
        .arg(dir)
        .args(["--compression", "none"]));
    let deb = String::from_utf8(built.stdout).unwrap().trim().to_owned();
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{deb}"
    );
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The root has no libc6 package to depend on, and maintainer scripts run outside it (they
    // see DPKG_ROOT and leave the host's systemd alone).
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-depends",
            "--force-script-chrootless",
            "--force-not-root",
            "--log=/dev/null",
            "-i",
        ])
        .arg(&deb));
    root
}

#[tokio::test]
async fn the_package_installs_verifies_and_migrates() {
    let dir = std::env::temp_dir().join(format!("tidemark-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = install(&dir);

    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--status", "tidemark"]));
    let status = String::from_utf8(status.stdout).unwrap();
    assert!(status.contains("Status: install ok installed"), "{status}");
    for conffile in ["/etc/tidemark/tidemark.toml", "/etc/tidemark/tidemark.env"] {
        assert!(
            status.contains(&format!(" {conffile} ")),
            "{conffile} is a conffile"
        );
    }
    for file in [
        "usr/bin/tidemark",
        "etc/tidemark/reference/stations.toml",
        "etc/tidemark/reference/dk-kommuner/PROVENANCE.md",
        "etc/tidemark/flood/baltic-2023.toml",
        "usr/share/tidemark/migrations/V1__reference_and_rejections.sql",
        "usr/share/tidemark/mosquitto/tidemark.conf",
        "usr/share/tidemark/mosquitto/tidemark.acl",
        "usr/share/doc/tidemark/README.md",
    ] {
        assert!(root.join(file).is_file(), "{file} is installed");
    }
    for unit in [
        "tidemark.target",
        "tidemark-migrate.service",
        "tidemark@.service",
    ] {
        assert!(
            root.join("lib/systemd/system").join(unit).is_file(),
            "{unit}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |file: &str| {
        std::fs::metadata(root.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        mode("etc/tidemark/tidemark.env"),
        0o600,
        "secrets for root only"
    );
    assert_eq!(mode("usr/bin/tidemark"), 0o755);
    // The migrations shipped are the released ones, byte for byte.
    run(Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(root.join("usr/share/tidemark/migrations")));

    // systemd-analyze needs the units a Debian system with systemd has (sysinit.target and the
    // rest): the host's, copied beside the package's, as if systemd were installed there too.
    let host_units = Path::new("/lib/systemd/system");
    for entry in std::fs::read_dir(host_units).unwrap() {
        let entry = entry.unwrap();
        let to = root.join("lib/systemd/system").join(entry.file_name());
        if entry.file_type().unwrap().is_file() && !to.exists() {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    let verified = run(Command::new("systemd-analyze")
        .arg(format!("--root={}", root.display()))
        .arg("verify")
        .args(UNITS));
    let warnings = String::from_utf8_lossy(&verified.stderr);
    assert!(
        warnings.trim().is_empty(),
        "systemd-analyze verify: {warnings}"
    );
    for unit in &UNITS[1..] {
        let review = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit));
        let review = String::from_utf8_lossy(&review.stdout);
        let exposure: f64 = review
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {review}"));
        assert!(exposure <= 2.0, "{unit}: exposure {exposure}");
    }

    // The installed binary with the installed configuration: what tidemark-migrate.service runs.
    let database = TestDatabase::create(&test_server()).await.unwrap();
    run(Command::new(root.join("usr/bin/tidemark"))
        .arg("migrate")
        .env("TIDEMARK_CONFIG", root.join("etc/tidemark/tidemark.toml"))
        .env("TIDEMARK__DATABASE__URL", &database.config.url)
        .env_remove("TIDEMARK_ENV"));
    let client = sql_client(&database.config.url).await;
    let counts = client
        .query_one(
            "SELECT (SELECT count(*) FROM stations), (SELECT count(*) FROM flood_areas), \
                    (SELECT count(*) FROM municipalities)",
            &[],
        )
        .await
        .unwrap();
    let (stations, areas, municipalities): (i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2));
    assert!(
        stations > 0 && areas > 0 && municipalities >= 98,
        "{stations} stations, {areas} flood areas, {municipalities} municipalities"
    );
    drop(client);
    database.drop_database().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
