//! Embeds the built dashboard (`dashboard/dist/`, made by `scripts/dashboard.sh`) in the binary, so
//! that `tidemark run` serves it with nothing beside it on disk. Without it, a release build stops
//! and says what to run; any other build (a check, clippy, tests) goes on without the page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = manifest.join("../dashboard/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let index = dist.join("index.html");
    let target =
        PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("dashboard_assets.rs");
    if !index.is_file() {
        let advice = format!(
            "the dashboard is not built: {} is missing. Run `bash scripts/dashboard.sh` (it installs \
             the dashboard's npm packages from its lockfile and builds it), then build again",
            index.display()
        );
        // A release build is what gets deployed: it must carry the page. Checks, lints and debug
        // builds go on without it (a machine without npm can still check and test the Rust), and
        // the binary answers `/` with a problem that says what is missing.
        if std::env::var("PROFILE").as_deref() == Ok("release") {
            panic!("{advice}.");
        }
        println!("cargo:warning={advice}; this build serves no dashboard.");
        std::fs::write(
            target,
            "/// Whether the dashboard was built into this binary.\n\
             pub const BUILT: bool = false;\n\
             /// The dashboard's files: name, content type, bytes.\n\
             pub static ASSETS: &[(&str, &str, &[u8])] = &[];\n",
        )
        .expect("OUT_DIR is writable");
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dist)
        .expect("dashboard/dist is readable")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut out = String::from("/// Whether the dashboard was built into this binary.\n");
    out.push_str("pub const BUILT: bool = true;\n");
    out.push_str("/// The dashboard's files: name, content type, bytes.\n");
    out.push_str("pub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        let path = file.canonicalize().expect("an existing file");
        writeln!(
            out,
            "    ({name:?}, {:?}, include_bytes!({:?})),",
            content_type(file),
            path.display().to_string()
        )
        .expect("writing to a string");
    }
    out.push_str("];\n");
    std::fs::write(target, out).expect("OUT_DIR is writable");
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}
