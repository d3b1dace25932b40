//! Keeps `docs/architecture.md` true: each "Architecture invariant" there
//! about dependencies is checked here against the crates' manifests, and
//! every Rust module must open with a `//!` doc.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Names of the normal (non-dev) dependencies of the crate in `dir`.
fn dependencies(dir: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    let mut names = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(deps) = manifest.get(section).and_then(|d| d.as_table()) {
            names.extend(deps.keys().cloned());
        }
    }
    names
}

const RUNTIMES: &[&str] = &["glommio", "io-uring", "tokio", "mio", "async-std", "smol"];
const TLS: &[&str] = &["rustls", "ring", "openssl", "native-tls"];
const SERVER_INTERNALS: &[&str] = &["gateway", "queue-engine", "shard-router"];

/// (crate folder, forbidden dependencies, the invariant in words)
const INVARIANTS: &[(&str, &[&[&str]], &str)] = &[
    (
        "wire-format",
        &[RUNTIMES, TLS, SERVER_INTERNALS],
        "wire-format never imports a runtime, TLS or a server crate",
    ),
    (
        "shard-router",
        &[RUNTIMES, TLS, &["queue-engine", "gateway"]],
        "shard-router is pure logic",
    ),
    (
        "queue-engine",
        &[TLS, &["gateway", "shard-router"]],
        "queue-engine knows no TLS, sessions or routing",
    ),
    (
        "client",
        &[SERVER_INTERNALS],
        "client speaks only the documented protocol",
    ),
    (
        "loadgen",
        &[SERVER_INTERNALS],
        "loadgen drives the gateway only through the client",
    ),
];

#[test]
fn dependency_invariants_hold() {
    let mut broken = Vec::new();
    for (dir, forbidden, invariant) in INVARIANTS {
        for dep in dependencies(dir) {
            if forbidden.iter().any(|list| list.contains(&dep.as_str())) {
                broken.push(format!("{dir} depends on {dep}: breaks \"{invariant}\""));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn architecture_doc_states_every_checked_invariant() {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    for (_, _, invariant) in INVARIANTS {
        assert!(
            doc.contains(invariant),
            "docs/architecture.md must state: {invariant}"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let skip = [
                "target",
                "generated",
                "third_party",
                ".git",
                "corpus",
                "artifacts",
            ];
            if !skip.contains(&name.as_str()) && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_opens_with_a_doc() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    assert!(files.len() > 10, "found the sources");
    let undocumented: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "modules without a //! doc: {undocumented:#?}"
    );
}
