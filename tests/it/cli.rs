//! The binary as a person meets it.

use std::process::{Command, Output};

fn tidemark(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TIDEMARK_ENV")
        .env_remove("TIDEMARK_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run tidemark")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let output = tidemark(&["--help"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for command in ["run", "ingest", "migrate", "bench", "--config", "--env"] {
        assert!(text.contains(command), "--help mentions {command}:\n{text}");
    }
}

#[test]
fn a_missing_configuration_file_is_named() {
    let output = tidemark(&["--config", "config/nope.toml", "migrate"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("config/nope.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unknown_key_is_named() {
    let output = tidemark(&["migrate"], &[("TIDEMARK__INGEST__BATCH_SIZE", "5")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("batch_size"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_unreachable_database_names_the_url_and_the_failure() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let url = "postgres://postgres@127.0.0.1:1/tidemark";
    let output = tidemark(&["migrate"], &[("TIDEMARK__DATABASE__URL", url)]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains(url), "{text}");
    assert!(text.contains("cannot connect"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidemark_run_ingests_serves_and_stops_cleanly_on_sigterm() {
    use crate::support::*;
    let harness = Harness::start().await;
    let database = harness.settings(Default::default()).database;
    let http_port = tidemark_testkit::free_port().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .arg("run")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("TIDEMARK_ENV")
        .env("TIDEMARK__DATABASE__URL", &database.url)
        .env("TIDEMARK__MQTT__PORT", harness.broker.port.to_string())
        .env("TIDEMARK__API__LISTEN", format!("127.0.0.1:{http_port}"))
        .env("TIDEMARK__INGEST__CLIENT_ID", "ingest-run")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The reference data of config/reference/ is loaded by `run`.
    let loaded = wait_for(std::time::Duration::from_secs(30), || async {
        harness
            .store
            .directory()
            .await
            .unwrap()
            .devices
            .iter()
            .any(|d| d.as_str() == "flensburg-gauge")
    })
    .await;
    assert!(loaded, "tidemark run loaded config/reference/stations.toml");
    let ts = rfc3339(chrono::Utc::now());
    let payload =
        format!(r#"{{"sensor":"flensburg.sea_level","ts":"{ts}","value":227,"unit":"cm"}}"#);
    let stored = wait_for(std::time::Duration::from_secs(30), || async {
        // Published until the subscription exists; the unique key absorbs the repeats.
        publish(
            &harness.broker_config(),
            vec![(topic("flensburg-gauge"), payload.clone().into_bytes())],
        )
        .await;
        !harness
            .store
            .sensor_readings("flensburg.sea_level")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(stored, "a reading published to the broker was stored");
    let readings = harness
        .store
        .sensor_readings("flensburg.sea_level")
        .await
        .unwrap();
    assert_eq!(readings.len(), 1);
    assert!((readings[0].1 - 2.27).abs() < 1e-12);
    let healthy = tokio::net::TcpStream::connect(("127.0.0.1", http_port))
        .await
        .is_ok();
    assert!(healthy, "the HTTP API listens on api.listen");
    let warnings = reqwest::get(format!("http://127.0.0.1:{http_port}/api/v1/warnings"))
        .await
        .unwrap();
    assert_eq!(
        warnings.status().as_u16(),
        200,
        "the warnings API is served"
    );
    // The map dashboard is in the binary: its page and its script.
    let page = reqwest::get(format!("http://127.0.0.1:{http_port}/"))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("/dashboard/app.js"));
    let script = reqwest::get(format!("http://127.0.0.1:{http_port}/dashboard/app.js"))
        .await
        .unwrap();
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );

    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("tidemark run stops within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
    harness.finish().await;
}

#[test]
fn verify_names_a_bad_period() {
    let output = tidemark(&["verify", "--from", "yesterday"], &[]);
    // A usage error, like a bad configuration: 2, not 1 (which is for failures at run time).
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--from \"yesterday\""),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shown_once_listed_by_prefix_and_revocable() {
    use crate::support::*;
    let harness = Harness::start().await;
    let url = harness.settings(Default::default()).database.url;
    let env = [("TIDEMARK__DATABASE__URL", url.as_str())];
    let keys = |args: &[&str]| {
        let mut all = vec!["keys"];
        all.extend_from_slice(args);
        tidemark(&all, &env)
    };

    let output = keys(&["create", "--role", "municipality"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("--municipality"),
        "{}",
        stderr(&output)
    );
    let output = keys(&["create", "--role", "mayor"]);
    assert!(
        stderr(&output).contains("not one of"),
        "{}",
        stderr(&output)
    );
    let output = keys(&["create", "--role", "municipality", "--municipality", "0580"]);
    assert!(
        stderr(&output).contains("not loaded"),
        "{}",
        stderr(&output)
    );

    // A device key names a registered device, whose Observations it posts.
    let output = keys(&["create", "--role", "device"]);
    assert!(stderr(&output).contains("--device"), "{}", stderr(&output));
    let output = keys(&["create", "--role", "device", "--device", "no-such-gauge"]);
    assert!(
        stderr(&output).contains("not registered"),
        "{}",
        stderr(&output)
    );
    sql(&harness)
        .await
        .execute(
            "INSERT INTO devices (key) VALUES ('gauge-7') ON CONFLICT DO NOTHING",
            &[],
        )
        .await
        .unwrap();
    let output = keys(&["create", "--role", "device", "--device", "gauge-7"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let device_key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let caller = tidemark_api::auth::authenticate(&harness.store, &device_key, chrono::Utc::now())
        .await
        .expect("the printed key authenticates");
    assert_eq!(
        (caller.role, caller.device.as_deref()),
        (tidemark_store::keys::Role::Device, Some("gauge-7"))
    );
    let listed = String::from_utf8_lossy(&keys(&["list"]).stdout).into_owned();
    assert!(listed.contains("device\tgauge-7"), "{listed}");

    let output = keys(&[
        "create",
        "--role",
        "utility",
        "--label",
        "Aarhus Vand",
        "--expires-in",
        "30d",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(key.starts_with("tmk_"), "{key}");
    let prefix = key[4..16].to_owned();
    let caller = tidemark_api::auth::authenticate(&harness.store, &key, chrono::Utc::now())
        .await
        .expect("the printed key authenticates");
    assert_eq!(caller.role, tidemark_store::keys::Role::Utility);

    let listed = String::from_utf8_lossy(&keys(&["list"]).stdout).into_owned();
    assert!(
        listed.contains(&prefix) && listed.contains("utility") && listed.contains("expires"),
        "{listed}"
    );
    assert!(
        !listed.contains(&key),
        "the key itself is never shown again"
    );

    assert!(keys(&["revoke", &prefix]).status.success());
    let listed = String::from_utf8_lossy(&keys(&["list"]).stdout).into_owned();
    assert!(listed.contains("revoked"), "{listed}");
    assert!(
        !keys(&["revoke", &prefix]).status.success(),
        "revoking twice is an error"
    );
    assert!(
        tidemark_api::auth::authenticate(&harness.store, &key, chrono::Utc::now())
            .await
            .is_err()
    );
    harness.finish().await;
}

#[test]
fn verify_with_a_period_it_cannot_read_is_a_usage_error() {
    for args in [
        vec!["verify", "--from", "last tuesday"],
        vec![
            "verify",
            "--from",
            "2023-10-20T00:00:00Z",
            "--to",
            "2023-10-19T00:00:00Z",
        ],
        vec![
            "verify",
            "--from",
            "2023-10-20T00:00:00Z",
            "--grace",
            "soon",
        ],
    ] {
        let output = tidemark(&args, &[]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        assert!(text.contains("--"), "{args:?} names the option: {text}");
    }
}
