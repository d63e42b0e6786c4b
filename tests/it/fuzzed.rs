//! The fuzz targets' properties (`fuzz/checks.rs`) over every kept input: the
//! seeds, each named for what must become of it (`ok-…` accepted, `bad-…`
//! refused), and every crasher the fuzzer ever found (`fuzz/regressions/`),
//! which must now pass. `scripts/fuzz` runs the fuzzers themselves.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::PathBuf;

use checks::Outcome;

fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != ".gitkeep"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn replay(target: &str, check: fn(&[u8]) -> Outcome) {
    let seeds = inputs("seeds", target);
    assert!(
        seeds.iter().any(|(n, _)| n.starts_with("ok-"))
            && seeds.iter().any(|(n, _)| n.starts_with("bad-")),
        "{target}: seeds of both kinds"
    );
    for (name, data) in seeds {
        let expected = if name.starts_with("ok-") {
            Outcome::Accepted
        } else {
            assert!(
                name.starts_with("bad-"),
                "seed {name}: name it ok-… or bad-…"
            );
            Outcome::Rejected
        };
        assert_eq!(check(&data), expected, "{target} seed {name}");
    }
    for (name, data) in inputs("regressions", target) {
        // A past crasher: whatever the outcome, the properties hold.
        let _ = std::panic::catch_unwind(|| check(&data))
            .unwrap_or_else(|_| panic!("{target} regression {name} fails again"));
    }
}

#[test]
fn decryptor_inputs_from_the_fuzz_corpus() {
    replay("decrypt", checks::decrypt);
}

#[test]
fn manifest_inputs_from_the_fuzz_corpus() {
    replay("manifest", checks::manifest);
}

#[test]
fn config_inputs_from_the_fuzz_corpus() {
    replay("config", checks::config);
}
