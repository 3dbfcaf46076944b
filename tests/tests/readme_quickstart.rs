//! The README's quick start, pasted into a fresh crate with exactly the `[dependencies]` the
//! README names, must build: a dependency the code needs but the README leaves out fails here.
//!
//! The crate is built offline (everything it needs is in the workspace's lock file and cargo's
//! cache), in a target directory of its own under the workspace's, so that later runs only
//! rebuild the pasted code.

use std::path::{Path, PathBuf};
use std::process::Command;

const README: &str = include_str!("../../README.md");

/// The body of the first fenced block after `## Quick start` whose info string starts with
/// `lang` and that contains `needle`.
fn quick_start_block(lang: &str, needle: &str) -> String {
    let start = README
        .find("\n## Quick start")
        .expect("README.md has a `## Quick start` section");
    let section = &README[start + 1..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let body = body.join("\n");
        if info.split(',').next() == Some(lang) && body.contains(needle) {
            return body + "\n";
        }
    }
    panic!("no ```{lang} block containing {needle:?} in the README's quick start");
}

/// The README's `[dependencies]`, with `cache-worker` pointed at this workspace.
fn manifest(dependencies: &str, runtime: &Path) -> String {
    let mut out = String::from(
        "[package]\nname = \"readme-quickstart\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         publish = false\n\n[workspace]\n\n",
    );
    let mut found = false;
    for line in dependencies.lines() {
        if line.trim_start().starts_with("cache-worker ")
            || line.trim_start().starts_with("cache-worker=")
        {
            found = true;
            out += &format!(
                "cache-worker = {{ path = {:?} }}\n",
                runtime.display().to_string()
            );
        } else {
            out += line;
            out += "\n";
        }
    }
    assert!(
        found,
        "the README's [dependencies] do not name cache-worker:\n{dependencies}"
    );
    out
}

fn target_dir(workspace: &Path) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    base.join("readme-quickstart")
}

#[test]
fn readme_quick_start_builds_with_the_dependencies_it_names() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    let code = quick_start_block("rust", "fn main");
    let dependencies = quick_start_block("toml", "[dependencies]");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let manifest = manifest(&dependencies, &workspace.join("cache-worker"));
    std::fs::write(dir.path().join("Cargo.toml"), &manifest).expect("write Cargo.toml");
    std::fs::create_dir(dir.path().join("src")).expect("create src/");
    std::fs::write(dir.path().join("src/main.rs"), &code).expect("write src/main.rs");
    // The workspace's versions: offline, and the target directory's builds are reused.
    std::fs::copy(workspace.join("Cargo.lock"), dir.path().join("Cargo.lock"))
        .expect("copy Cargo.lock");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir.path())
        .args(["build", "--offline", "--quiet", "--target-dir"])
        .arg(target_dir(workspace))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "the README's quick start does not build with the dependencies it names\n\
         --- Cargo.toml\n{manifest}\n--- cargo's stderr\n{}",
        String::from_utf8_lossy(&output.stderr),
    );
}
