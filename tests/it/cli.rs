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
