//! The layers of `src/` (docs/architecture.md): every top-level module imports
//! only modules listed before it, so no import cycle can form between them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Bottom to top; modules on one line may not import each other.
const LAYERS: &[&[&str]] = &[
    &["keys", "telemetry"],
    &["domain"],
    &["pg"],
    &["storage"],
    &["pipeline"],
    &["policy"],
    &["config"],
    &["metrics"],
    &["state"],
    &["alerts"],
    &["app"],
    &["catalog"],
    &["commands"],
    &["run"],
    &["daemon"],
    &["http"],
    &["cli"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::NAME` in the code of a file (comments left out).
fn imported(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let own = rank(&top).unwrap_or_else(|| panic!("src/{top} is in no layer of this test"));
        seen.insert(top.clone());
        for name in imported(&std::fs::read_to_string(file).unwrap()) {
            if name == top {
                continue;
            }
            match rank(&name) {
                Some(r) if r < own => {}
                _ => wrong.push(format!("src/{} ({top}) imports {name}", rel.display())),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
    // The test sees every layer, so a renamed module cannot slip out of it.
    let all: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter().map(|s| (*s).to_owned()))
        .collect();
    assert_eq!(seen, all);
}

#[test]
fn the_checker_sees_an_upward_import() {
    let found = imported("use crate::daemon::Daemon; // crate::cli\nlet x = crate::pg::quote(a);");
    assert_eq!(
        found,
        BTreeSet::from(["daemon".to_owned(), "pg".to_owned()])
    );
}
