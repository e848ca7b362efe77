//! Bytes on the wire per share and per job, Stratum V1 against V2 (encrypted), and Noise
//! throughput. `cargo bench -p quarry-stratum --bench wire`
//!
//! The byte counts are printed first (they are exact, not timed); criterion then times frame
//! encryption and decryption.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quarry_stratum::v1::message::{notification_line, result_line};
use quarry_stratum::v2::message::Message;
use quarry_stratum::v2::noise::{InitiatorHandshake, ResponderHandshake, Transport};
use quarry_stratum::v2::AuthorityKeypair;
use serde_json::json;

fn pair() -> (Transport, Transport) {
    let authority = AuthorityKeypair::generate();
    let mut initiator = InitiatorHandshake::new(&authority.public, 1 << 20).expect("key");
    let act1 = initiator.start().expect("act1");
    let responder = ResponderHandshake::new(&authority, 3600, 1 << 20).expect("key");
    let now = 1_800_000_000;
    let (act2, server) = responder.respond(&act1, now).expect("act2");
    let client = initiator.finish(&act2, now).expect("trusted");
    (client, server)
}

fn encrypted_len(transport: &mut Transport, message: &Message) -> usize {
    let mut out = Vec::new();
    transport.encrypt(&message.to_frame_bytes(), &mut out);
    out.len()
}

/// A coinbase split as Quarry builds it: 4-byte extranonce1, 8-byte extranonce2, P2WPKH payout
/// and a witness commitment.
const COINB1_LEN: usize = 42 + 4;
const COINB2_LEN: usize = 15 + 4 + 1 + 31 + 46 + 4;

fn report() {
    let (mut client, mut server) = pair();
    println!("\nbytes on the wire (SV2 encrypted, V1 plaintext JSON):");
    // A share and its answer.
    let v1_submit = json!({"id": 4242, "method": "mining.submit", "params": [
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq.rig01", "1a2b", "0000000000000001",
        "6553f100", "9a3c5e21", "1fffe000"]})
    .to_string()
        + "\n";
    let v1_answer = result_line(&json!(4242), json!(true));
    let sv2_submit = encrypted_len(
        &mut client,
        &Message::SubmitSharesStandard {
            channel_id: 2,
            sequence_number: 4242,
            job_id: 77,
            nonce: 0x9a3c_5e21,
            ntime: 0x6553_f100,
            version: 0x3fff_e000,
        },
    );
    let sv2_extended = encrypted_len(
        &mut client,
        &Message::SubmitSharesExtended {
            channel_id: 2,
            sequence_number: 4242,
            job_id: 77,
            nonce: 1,
            ntime: 2,
            version: 3,
            extranonce: vec![0; 8],
        },
    );
    let sv2_success = encrypted_len(
        &mut server,
        &Message::SubmitSharesSuccess {
            channel_id: 2,
            last_sequence_number: 4242,
            new_submits_accepted_count: 1,
            new_shares_sum: 1,
        },
    );
    let v1_share = v1_submit.len() + v1_answer.len();
    let sv2_share = sv2_submit + sv2_success;
    println!(
        "  share  V1 submit {} + answer {} = {v1_share}",
        v1_submit.len(),
        v1_answer.len()
    );
    println!(
        "  share  SV2 standard {sv2_submit} + success {sv2_success} = {sv2_share} ({:.0} % less); batched success of 10: {} per share",
        100.0 * (1.0 - sv2_share as f64 / v1_share as f64),
        sv2_submit + sv2_success / 10
    );
    println!("  share  SV2 extended {sv2_extended} + success {sv2_success}");
    // A job, for an empty template and for ~3,000 transactions (12 merkle branches).
    for branches in [0usize, 12] {
        let branch: Vec<String> = (0..branches).map(|_| "ab".repeat(32)).collect();
        let v1_notify = notification_line(
            "mining.notify",
            json!([
                "1a2b",
                "cd".repeat(32),
                "00".repeat(COINB1_LEN),
                "00".repeat(COINB2_LEN),
                branch,
                "20000000",
                "1703a30c",
                "6553f100",
                true
            ]),
        );
        let standard = encrypted_len(
            &mut server,
            &Message::NewMiningJob {
                channel_id: 2,
                job_id: 77,
                min_ntime: Some(0x6553_f100),
                version: 0x2000_0000,
                merkle_root: [1; 32],
            },
        );
        let prevhash = encrypted_len(
            &mut server,
            &Message::SetNewPrevHash {
                channel_id: 2,
                job_id: 77,
                prev_hash: [2; 32],
                min_ntime: 1,
                nbits: 2,
            },
        );
        let extended = encrypted_len(
            &mut server,
            &Message::NewExtendedMiningJob {
                channel_id: 2,
                job_id: 77,
                min_ntime: None,
                version: 0x2000_0000,
                version_rolling_allowed: true,
                merkle_path: vec![[3; 32]; branches],
                coinbase_tx_prefix: vec![0; COINB1_LEN],
                coinbase_tx_suffix: vec![0; COINB2_LEN],
            },
        );
        println!(
            "  job ({branches:>2} branches)  V1 notify {}; SV2 standard job {standard} (+ SetNewPrevHash {prevhash} on a new block) = {:.0} % less; SV2 extended job {extended}",
            v1_notify.len(),
            100.0 * (1.0 - standard as f64 / v1_notify.len() as f64),
        );
    }
    println!();
}

fn noise(c: &mut Criterion) {
    report();
    let mut group = c.benchmark_group("noise");
    for size in [30usize, 300, 4000] {
        let (mut client, mut server) = pair();
        let frame = Message::SubmitSharesExtended {
            channel_id: 2,
            sequence_number: 1,
            job_id: 1,
            nonce: 1,
            ntime: 1,
            version: 1,
            extranonce: vec![0; 8],
        }
        .to_frame_bytes();
        let mut plain = frame.clone();
        plain.resize(size.max(frame.len()), 0);
        let len = (plain.len() - 6) as u32;
        plain[3..6].copy_from_slice(&len.to_le_bytes()[..3]);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("encrypt+decrypt frame", plain.len()),
            &plain,
            |b, plain| {
                let mut wire = Vec::with_capacity(plain.len() + 64);
                b.iter(|| {
                    wire.clear();
                    client.encrypt(plain, &mut wire);
                    server.push(&wire);
                    server.next_frame().expect("valid").expect("complete")
                })
            },
        );
    }
    group.finish();
    let mut decode = c.benchmark_group("sv2 decode");
    let frame_bytes = Message::SubmitSharesStandard {
        channel_id: 2,
        sequence_number: 1,
        job_id: 1,
        nonce: 1,
        ntime: 1,
        version: 1,
    }
    .to_frame_bytes();
    let mut reader = quarry_stratum::v2::frame::PlainFrameReader::new(1024);
    reader.push(&frame_bytes);
    let frame = reader.next_frame().expect("ok").expect("complete");
    decode.throughput(Throughput::Elements(1));
    decode.bench_function("SubmitSharesStandard", |b| {
        b.iter(|| Message::decode(&frame).expect("valid"))
    });
    decode.finish();
}

criterion_group!(benches, noise);
criterion_main!(benches);
