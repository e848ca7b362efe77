//! The ledger's fuzz target bodies (`fuzz/fuzz_targets/<name>.rs` calls `<name>::run`), so that
//! the normal test suite replays the committed corpus on stable (`tests/fuzz_corpus.rs`).

/// `quarry verify` on what a hostile pool (or a tampered file) may send, and the coinbase payout
/// planner on arbitrary windows: never a panic, and every table the planner makes is one the
/// verifier agrees with. `cargo fuzz run coinbase_verify`
pub mod coinbase_verify {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use crate::amount::Sat;
    use crate::coinbase::{
        plan, table_credits, verify_table, CoinbaseLimits, CoinbaseTable, OutputCost,
        PublishedShare, WindowShare, WindowSnapshot,
    };
    use crate::schemes::{FeePolicy, SplitDestination};

    /// What the verifier reads from a pool, as one JSON document.
    #[derive(Deserialize)]
    struct Answer {
        table: CoinbaseTable,
        shares: Vec<PublishedShare>,
        outputs: BTreeMap<String, u64>,
        pool: Option<String>,
    }

    /// One input: JSON for the verifier, and the same bytes as a window for the planner.
    pub fn run(data: &[u8]) {
        if let Ok(answer) = serde_json::from_slice::<Answer>(data) {
            let _ = verify_table(
                &answer.table,
                &answer.shares,
                &answer.outputs,
                answer.pool.as_deref(),
            );
        }
        planned(data);
    }

    /// Bytes as a block: value, limits and fee from the first 12, then shares of three bytes
    /// (address, difficulty, carried balance), and checks the planner's invariants.
    fn planned(data: &[u8]) {
        let Some((head, body)) = data.split_at_checked(12) else {
            return;
        };
        let mut value = [0u8; 8];
        value.copy_from_slice(&head[..8]);
        let value = u64::from_le_bytes(value) % 2_100_000_000_000_000;
        let limits = CoinbaseLimits {
            min_output_sat: u64::from(head[8]) * 1_000,
            max_outputs: usize::from(head[9] % 32) + 1,
            weight_budget: u64::from(head[10]) * 124,
            sigops_budget: 400,
        };
        let policy = FeePolicy {
            fee_ppm: u64::from(head[11]) * 4_000,
            split: vec![
                SplitDestination {
                    label: "a".into(),
                    address: "fee-a".into(),
                    ppm: 600_000,
                },
                SplitDestination {
                    label: "b".into(),
                    address: "m3".into(),
                    ppm: 400_000,
                },
            ],
        };
        let mut shares = Vec::new();
        let mut carried = BTreeMap::new();
        for (id, chunk) in body.chunks_exact(3).enumerate() {
            let address = format!("m{}", chunk[0] % 16);
            if chunk[2] > 200 {
                carried.insert(address.clone(), Sat(u64::from(chunk[2]) * 997));
            }
            shares.push(PublishedShare {
                id: id as i64 + 1,
                created_ms: id as i64,
                address,
                worker: String::new(),
                difficulty: f64::from(chunk[1]) / 16.0,
                hash: None,
            });
        }
        shares.reverse();
        let window: Vec<WindowShare> = shares.iter().map(PublishedShare::window_share).collect();
        let difficulty = window.iter().map(|s| s.difficulty).sum::<f64>() * 0.75;
        let snapshot = WindowSnapshot::from_newest_first(&window, difficulty);
        let table = plan(1, Sat(value), &snapshot, &carried, &policy, &limits, |a| {
            // m7 is an address the coinbase cannot pay; m5's script is a large one.
            match a {
                "m7" => None,
                "m5" => Some(OutputCost {
                    weight: 172,
                    sigops: 4,
                }),
                _ => Some(OutputCost {
                    weight: 124,
                    sigops: 0,
                }),
            }
        });
        let outputs: Vec<(&str, u64)> = table.outputs().collect();
        assert!(outputs.len() <= limits.max_outputs);
        assert!(outputs
            .iter()
            .all(|(a, sat)| *sat >= limits.min_output_sat && *a != "m7"));
        let paid: u64 = outputs.iter().map(|(_, sat)| sat).sum();
        assert!(paid <= value, "outputs {paid} over the value {value}");
        if !table.is_empty() {
            let credited: u64 = table_credits(&table).iter().map(|c| c.1 .0).sum();
            assert_eq!(credited, value, "a block credits its whole value");
        }
        for e in &table.entries {
            let carry = carried.get(&e.address).map_or(0, |s| s.0);
            assert!(e.carried_sat <= carry, "pays more balance than is owed");
        }
        // What the planner made, the verifier agrees with.
        let mut coinbase: BTreeMap<String, u64> = BTreeMap::new();
        coinbase.insert("pool".into(), table.remainder_sat());
        for (address, sat) in &outputs {
            *coinbase.entry((*address).to_string()).or_default() += sat;
        }
        let problems = verify_table(&table, &shares, &coinbase, Some("pool"));
        assert!(problems.is_empty(), "{problems:?}");
    }
}
