//! Embeds the built dashboard (`dashboard/dist/`, made by `scripts/dashboard.sh`) in the binary, so
//! that `tidemark run` serves it with nothing beside it on disk.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let dist = manifest.join("../dashboard/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let index = dist.join("index.html");
    if !index.is_file() {
        panic!(
            "the dashboard is not built: {} is missing. Run `bash scripts/dashboard.sh` (it installs \
             the dashboard's npm packages from its lockfile and builds it), then build again.",
            index.display()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dist)
        .expect("dashboard/dist is readable")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut out = String::from("/// The dashboard's files: name, content type, bytes.\n");
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
    let target =
        PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("dashboard_assets.rs");
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
