//! The ledger's fuzz targets' committed corpus (`fuzz/corpus/<target>/`) and kept crash inputs
//! (`fuzz/regressions/<target>/`), replayed on stable through the targets' bodies.

use std::path::{Path, PathBuf};

/// A target's body.
type Run = fn(&[u8]);

const TARGETS: &[(&str, Run)] = &[(
    "coinbase_verify",
    quarry_ledger::fuzzing::coinbase_verify::run,
)];

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
fn the_ledger_corpus_and_kept_crash_inputs_run_clean() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, run) in TARGETS {
        let corpus = inputs(&fuzz.join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).expect("readable");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{name}: {} panics", file.display());
        }
    }
}
