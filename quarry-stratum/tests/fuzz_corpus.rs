//! The committed fuzz corpus (`fuzz/corpus/<target>/`) and every crash input kept from a
//! campaign (`fuzz/regressions/<target>/`), replayed through the targets' bodies on the stable
//! toolchain: a regression comes back as a failing test, not only as a fuzzer finding.

use std::path::{Path, PathBuf};

use quarry_stratum::fuzzing;

/// A target's body.
type Run = fn(&[u8]);

/// Every fuzz target, by its `fuzz/fuzz_targets/<name>.rs` name.
const TARGETS: &[(&str, Run)] = &[
    ("auxpow", fuzzing::auxpow::run),
    ("ownership", fuzzing::ownership::run),
    ("gbt_template", fuzzing::gbt_template::run),
    ("proxy", fuzzing::proxy::run),
    ("proxy_header", fuzzing::proxy_header::run),
    ("sv2_frames", fuzzing::sv2_frames::run),
    ("sv2_session", fuzzing::sv2_session::run),
    ("tp_session", fuzzing::tp_session::run),
    ("v1_client", fuzzing::v1_client::run),
    ("v1_session", fuzzing::v1_session::run),
    ("v1_submit", fuzzing::v1_submit::run),
];

/// Targets whose bodies live in other crates, which replay their corpus themselves
/// (`quarry-kaspa/tests/fuzz_corpus.rs`, `quarry-ledger/tests/fuzz_corpus.rs`).
const ELSEWHERE: &[&str] = &["coinbase_verify", "kaspa_session"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted (none when it does not exist).
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_target_is_listed_here_and_has_a_corpus() {
    let mut on_disk: Vec<String> = inputs(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(ELSEWHERE.iter().map(|n| n.to_string()))
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fuzz/fuzz_targets and this list differ");
    for (name, _) in TARGETS {
        assert!(
            !inputs(&fuzz_dir().join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name} is empty"
        );
    }
}

#[test]
fn the_corpus_and_every_kept_crash_input_run_clean() {
    for (name, run) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in inputs(&fuzz_dir().join(kind).join(name)) {
                let data = std::fs::read(&file).expect("readable");
                // A panic names the file, so the failing input is known.
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{name}: {} panics", file.display());
            }
        }
    }
}
