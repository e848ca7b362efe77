//! The fuzz targets' bodies, one module per target (`fuzz/fuzz_targets/<name>.rs` calls
//! `<name>::run`), so that the normal test suite replays the committed corpus and every crash
//! input kept in `fuzz/regressions/` without a nightly toolchain (`tests/fuzz_corpus.rs`).
//!
//! Each `run` takes arbitrary bytes and must never panic; the asserts inside are the targets'
//! invariants.

/// `data` split at 0xff bytes into SV2 frames (each header's length set to its payload's),
/// encrypted: how the session targets reach the code behind the Noise layer.
fn encrypted_frames(data: &[u8], transport: &mut crate::v2::noise::Transport) -> Vec<u8> {
    let mut wire = Vec::new();
    for frame in data.split(|b| *b == 0xff) {
        if frame.len() >= 6 {
            let mut fixed = frame.to_vec();
            let len = (frame.len() - 6) as u32;
            fixed[3..6].copy_from_slice(&len.to_le_bytes()[..3]);
            transport.encrypt(&fixed, &mut wire);
        }
    }
    wire
}

/// Arbitrary bytes as an AuxPoW, as RSK work and as a coinbase: errors, never panics, and every
/// AuxPoW that decodes encodes back to the same bytes. `cargo fuzz run auxpow`
pub mod auxpow {
    use quarry_work::auxpow::{meets_target, AuxHash, AuxPow, ChainId};
    use quarry_work::rsk::{check_coinbase, partial_merkle_params, RskWork};
    use quarry_work::Target;
    /// A fixed aux hash: in a one-chain tree its display bytes are the root the scriptSig needs,
    /// which the fuzzer can find.
    const AUX_HASH: AuxHash = AuxHash::from_internal([0x42; 32]);

    /// One input.
    pub fn run(data: &[u8]) {
        if let Ok(auxpow) = AuxPow::decode(data) {
            // Decoding keeps the coinbase bytes and every field, so nothing is lost or normalized.
            assert_eq!(auxpow.encode(), data);
            for strict in [false, true] {
                let _ = auxpow.verify(AUX_HASH, ChainId::NAMECOIN, strict);
            }
            let _ = meets_target(&auxpow.parent_block_hash(), 0x207f_ffff);
        }

        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
            if let Ok(work) = RskWork::from_get_work(&value) {
                let _ = work.tag_output();
                let _ = work.check_coinbase(data);
            }
        }
        let _ = check_coinbase(data, &[0x42; 32]);
        if let Some((header, coinbase)) = data.split_first_chunk::<80>() {
            let _ = partial_merkle_params(header, coinbase, &[[0x42; 32]], coinbase.len());
        }

        if let Some((bits, _)) = data.split_first_chunk::<4>() {
            let bits = u32::from_le_bytes(*bits);
            if let Some(target) = Target::from_compact_checked(bits) {
                // Where Core accepts the bits, both decodings agree.
                assert_eq!(target, Target::from_compact(bits), "{bits:08x}");
            }
        }
    }
}

/// Arbitrary `getblocktemplate` answers: errors, never panics. `cargo fuzz run gbt_template`
pub mod gbt_template {
    use quarry_work::template::{GetBlockTemplate, WorkTemplate};

    /// One input.
    pub fn run(data: &[u8]) {
        if let Ok(gbt) = serde_json::from_slice::<GetBlockTemplate>(data) {
            let _ = WorkTemplate::from_gbt(&gbt, 1);
        }
    }
}

/// Arbitrary bytes into the SV1 → SV2 proxy from both sides: miner lines (V1 JSON) and upstream
/// bytes before and during the handshake. Never a panic. `cargo fuzz run proxy`
pub mod proxy {
    use crate::proxy::{Proxy, ProxyConfig};
    use crate::v2::AuthorityKeypair;

    /// One input.
    pub fn run(data: &[u8]) {
        let authority = AuthorityKeypair::from_secret_bytes(&[7; 32]).expect("valid key");
        let (first, rest) = data.split_at(data.len() / 2);
        for aggregate in [true, false] {
            let mut proxy = Proxy::new(ProxyConfig {
                user_identity: "fuzz".into(),
                aggregate,
                ..ProxyConfig::default()
            });
            proxy.downstream_connected(1);
            proxy.downstream_connected(2);
            proxy.downstream_bytes(
                1,
                b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[]}\n",
                1_800_000_000,
            );
            for chunk in first.chunks(61) {
                proxy.downstream_bytes(2, chunk, 1_800_000_000);
            }
            proxy
                .upstream_connected(&authority.public, ("fuzz".into(), 1))
                .expect("initiator");
            for chunk in rest.chunks(89) {
                proxy.upstream_bytes(chunk, 1_800_000_000);
            }
            // The same bytes from a JDS (Job Declaration), with a template to declare.
            proxy
                .jd_connected(&authority.public, ("fuzz".into(), 1))
                .expect("initiator");
            proxy.handle_template(crate::testkit::template(1, 7, crate::testkit::REGTEST_BITS));
            for chunk in rest.chunks(73) {
                proxy.jd_bytes(chunk, 1_800_000_000);
            }
            while proxy.poll_jd_transmit().is_some() {}
            proxy.jd_lost("fuzz");
            proxy.downstream_closed(2);
            proxy.upstream_lost("fuzz");
            while proxy.poll_event().is_some() {}
            while proxy.poll_upstream_transmit().is_some() {}
        }
    }
}

/// Arbitrary bytes as plaintext SV2 frames and as message payloads: never a panic, and every
/// message that decodes encodes back to a frame that decodes to the same message.
/// `cargo fuzz run sv2_frames`
pub mod sv2_frames {
    use crate::v2::frame::PlainFrameReader;
    use crate::v2::message::Message;

    /// One input.
    pub fn run(data: &[u8]) {
        let mut reader = PlainFrameReader::new(64 * 1024);
        reader.push(data);
        while let Ok(Some(frame)) = reader.next_frame() {
            if let Ok(message) = Message::decode(&frame) {
                let again = message.to_frame_bytes();
                let mut check = PlainFrameReader::new(1 << 24);
                check.push(&again);
                let frame = check.next_frame().expect("bounded").expect("complete");
                // NaN hashrates do not compare equal; compare the bytes instead.
                let reencoded = Message::decode(&frame).expect("our own encoding decodes");
                assert_eq!(reencoded.to_frame_bytes(), again);
                // A declared coinbase is taken apart by the JDS: errors, never panics.
                if let Message::DeclareMiningJob {
                    coinbase_tx_prefix,
                    coinbase_tx_suffix,
                    ..
                } = &message
                {
                    if let Ok((coinbase, _)) = crate::v2::declaration::DeclaredCoinbase::parse(
                        coinbase_tx_prefix,
                        coinbase_tx_suffix,
                    ) {
                        let _ = coinbase.pays_only(&[0x51]);
                        let _ = coinbase.parts();
                    }
                }
            }
        }
    }
}

/// Arbitrary bytes into an SV2 pool session, both raw (handshake bytes, garbage) and as frames
/// encrypted after a real handshake: never a panic; a session either keeps going or closes
/// with a reason. `cargo fuzz run sv2_session`
pub mod sv2_session {
    use crate::v1::SessionConfig;
    use crate::v2::declaration::Verdict;
    use crate::v2::noise::InitiatorHandshake;
    use crate::v2::{AuthorityKeypair, PoolSession, Sv2Config};
    use std::sync::Arc;

    /// One input.
    pub fn run(data: &[u8]) {
        // The server's own pool state, from the test kit; a 3-byte prefix leaves one byte of ids
        // (256), so a long input can also run the extranonce space out.
        // Job Declaration on (coinbase-only too), so the same bytes reach the JDS as well as
        // the mining side; tokens from 0, so an input can name one.
        let pool = crate::testkit::pool_with_prefix(vec![0, 0, 0]).with_declarations(
            crate::v2::declaration::JdConfig {
                coinbase_only: true,
                first_token: Some(0),
                ..Default::default()
            },
        );
        let authority = AuthorityKeypair::from_secret_bytes(&[7; 32]).expect("valid key");
        let config = Arc::new(SessionConfig::default());
        let sv2 = Arc::new(Sv2Config::new(authority.clone()));
        let now = crate::Now::synced(1_800_000_000_000);

        // Raw bytes from the first byte on.
        let mut raw = PoolSession::new(Arc::clone(&config), Arc::clone(&sv2), now);
        for chunk in data.chunks(97) {
            raw.handle_bytes(chunk, now, &pool);
        }
        raw.handle_timeout(now.plus_ms(3_600_000), &pool);

        // The same bytes as plaintext frames inside a real session, which has work (height
        // 201), so declarations and channels get past "no template yet".
        let mut session = PoolSession::new(config, sv2, now);
        let bits = crate::testkit::HARD_BITS;
        session.handle_template(crate::testkit::template(1, 7, bits), now, &pool);
        let mut initiator = InitiatorHandshake::new(&authority.public, 1 << 20).expect("key");
        let act1 = initiator.start().expect("act1");
        session.handle_bytes(&act1, now, &pool);
        let act2 = session.poll_transmit().expect("act2");
        let Ok(act2) = act2.try_into() else { return };
        let mut transport = initiator
            .finish(&act2, now.unix_secs() as u32)
            .expect("trusted");
        let wire = super::encrypted_frames(data, &mut transport);
        session.handle_bytes(&wire, now, &pool);
        while session.awaiting_record() > 0 {
            session.share_recorded(data.first().is_none_or(|b| b % 7 != 0));
        }
        while session.poll_transmit().is_some() {}
        answer_checks(&mut session, data, now, &pool);
        // The next block (declarations made early for it go on), then time for the rest.
        session.handle_template(crate::testkit::template(2, 8, bits), now, &pool);
        answer_checks(&mut session, data, now, &pool);
        session.handle_timeout(now.plus_ms(3_600_000), &pool);
        while session.poll_transmit().is_some() {}
    }

    /// Answers the session's questions to the node, with a verdict the input picks.
    fn answer_checks(
        session: &mut PoolSession,
        data: &[u8],
        now: crate::Now,
        pool: &crate::pool::SharedPool,
    ) {
        while let Some(event) = session.poll_event() {
            if let crate::Event::CheckDeclaredBlock { request_id, .. } = event {
                let verdict = match data.last().map(|b| b % 3) {
                    Some(0) => Verdict::Valid,
                    Some(1) => Verdict::Invalid("bad-txns".into()),
                    _ => Verdict::Unavailable("down".into()),
                };
                session.handle_verdict(request_id, verdict, now, pool);
            }
        }
        while session.poll_transmit().is_some() {}
    }
}

/// Arbitrary bytes into a Template Provider connection, raw and as frames encrypted after a real
/// handshake (with a template to serve): never a panic. `cargo fuzz run tp_session`
pub mod tp_session {
    use crate::v2::noise::InitiatorHandshake;
    use crate::v2::template_provider::{TpConfig, TpSession};
    use crate::v2::AuthorityKeypair;
    use quarry_work::template::{GetBlockTemplate, WorkTemplate};
    use std::sync::Arc;

    /// One input.
    pub fn run(data: &[u8]) {
        let authority = AuthorityKeypair::from_secret_bytes(&[7; 32]).expect("valid key");
        let config = Arc::new(TpConfig::new(authority.clone()));
        let now = crate::Now::synced(1_800_000_000_000);
        let gbt: GetBlockTemplate = serde_json::from_str(
            r#"{"version":536870912,"previousblockhash":"0707070707070707070707070707070707070707070707070707070707070707",
                "transactions":[],"coinbasevalue":5000000000,"bits":"207fffff","curtime":1800000000,
                "height":201,"rules":["segwit"]}"#,
        )
        .expect("template");
        let template = Arc::new(WorkTemplate::from_gbt(&gbt, 1).expect("consistent"));

        let mut raw = TpSession::new(Arc::clone(&config), now);
        for chunk in data.chunks(97) {
            raw.handle_bytes(chunk, now);
        }
        raw.handle_timeout(now.plus_ms(3_600_000));

        let mut session = TpSession::new(config, now);
        session.handle_template(Arc::clone(&template));
        let mut initiator = InitiatorHandshake::new(&authority.public, 1 << 24).expect("key");
        session.handle_bytes(&initiator.start().expect("act1"), now);
        let Some(act2) = session.poll_transmit() else {
            return;
        };
        let Ok(act2) = act2.try_into() else { return };
        let mut transport = initiator
            .finish(&act2, now.unix_secs() as u32)
            .expect("trusted");
        let wire = super::encrypted_frames(data, &mut transport);
        session.handle_bytes(&wire, now);
        session.handle_template(template);
        while session.poll_transmit().is_some() {}
        while session.poll_event().is_some() {}
    }
}

/// Arbitrary bytes from a pool into the miner-side V1 client: never a panic, and nothing it
/// hands to the hashers breaks the extranonce bounds. `cargo fuzz run v1_client`
pub mod v1_client {
    use crate::v1::client::MAX_EXTRANONCE_LEN;
    use crate::v1::{Client, ClientConfig, ClientEvent};

    /// One input.
    pub fn run(data: &[u8]) {
        let mut client = Client::new(ClientConfig {
            user: "fuzz".into(),
            password: "x".into(),
            agent: "fuzz/1".into(),
            version_rolling: Some(0x1fff_e000),
        });
        // A valid subscribe answer first, so that jobs and answers are reached too.
        client.handle_bytes(b"{\"id\":2,\"result\":[[],\"01020304\",8],\"error\":null}\n");
        for chunk in data.chunks(61) {
            client.handle_bytes(chunk);
            let _ = client.submit("1", &[0; 8], 0, 0, Some(0x2000_0000));
            while let Some(event) = client.poll_event() {
                if let ClientEvent::Work(work) = event {
                    assert!(work.extranonce1.len() <= MAX_EXTRANONCE_LEN);
                    assert!((1..=MAX_EXTRANONCE_LEN).contains(&work.extranonce2_len));
                }
            }
            while client.poll_transmit().is_some() {}
            if client.close_reason().is_some() {
                break;
            }
        }
    }
}

/// Arbitrary bytes as one Stratum V1 line: the in-place submit parser and the general one give
/// the same result, and the answers to the line's id are JSON, byte for byte what a
/// `serde_json` map writes. `cargo fuzz run v1_submit`
pub mod v1_submit {
    fn has_float(value: &Value) -> bool {
        match value {
            Value::Number(n) => n.is_f64(),
            Value::Array(items) => items.iter().any(has_float),
            Value::Object(map) => map.values().any(has_float),
            _ => false,
        }
    }

    use crate::v1::message::{error_line, parse_line, parse_line_value, result_line, Incoming};
    use crate::v1::RequestError;
    use serde_json::{json, Value};

    /// One input.
    pub fn run(data: &[u8]) {
        let fast = parse_line(data);
        assert_eq!(fast, parse_line_value(data));
        if let Ok(Incoming::Request { id, .. }) = fast {
            let error = RequestError::InvalidParams(String::from_utf8_lossy(data).into());
            let map = |value: Value| format!("{value}\n");
            let result = result_line(&id, json!(true));
            assert_eq!(
                result,
                map(json!({"id": id, "result": true, "error": null}))
            );
            let error_answer = error_line(&id, &error);
            assert_eq!(
                error_answer,
                map(json!({"id": id, "result": null,
                           "error": [error.code().code(), error.to_string(), null]}))
            );
            for line in [result, error_answer] {
                let answer: Value = serde_json::from_str(&line).expect("an answer is JSON");
                // Floats aside: serde_json's default float parsing is not exact both ways.
                if !has_float(&id) {
                    assert_eq!(answer["id"], id);
                }
            }
        }
    }
}

/// Arbitrary bytes from a miner into a Stratum V1 session: never a panic, every output line
/// is valid JSON. `cargo fuzz run v1_session`
pub mod v1_session {
    use crate::v1::{Session, SessionConfig};
    use crate::Now;
    use quarry_work::template::{GetBlockTemplate, WorkTemplate};
    use std::sync::Arc;
    const START: Now = Now::synced(1_800_000_000_000);

    /// One input.
    pub fn run(data: &[u8]) {
        // The server's own pool state, from the test kit; a 3-byte prefix leaves one byte of ids
        // (256), so a long input can also run the extranonce space out.
        let pool = crate::testkit::pool_with_prefix(vec![0, 0, 0]);
        let gbt: GetBlockTemplate = serde_json::from_str(
            r#"{"version":536870912,"previousblockhash":"0000000000000000000000000000000000000000000000000000000000000007",
                "transactions":[],"coinbasevalue":5000000000,"bits":"207fffff","curtime":1800000000,
                "mintime":1799990000,"height":300}"#,
        )
        .expect("static template");
        let template = Arc::new(WorkTemplate::from_gbt(&gbt, 1).expect("static template"));
        let mut session = Session::new(Arc::new(SessionConfig::default()), START);
        session.handle_template(template, START, &pool);
        // Feed in chunks so that line splitting across reads is exercised too.
        for (i, chunk) in data.chunks(97).enumerate() {
            session.handle_bytes(chunk, START.plus_ms(i as u64 * 1000), &pool);
            // The share log's word: recorded, except now and then, which must close cleanly.
            while session.awaiting_record() > 0 {
                session.share_recorded(chunk.first().is_none_or(|b| b % 7 != 0));
            }
            while let Some(line) = session.poll_transmit() {
                assert!(serde_json::from_str::<serde_json::Value>(&line).is_ok());
            }
            while session.poll_event().is_some() {}
        }
    }
}

/// Arbitrary first bytes from a trusted load balancer as a PROXY header: errors, never panics;
/// a complete header is self-delimiting, and "need more" never outlasts the bound.
/// `cargo fuzz run proxy_header`
pub mod proxy_header {
    use crate::proxy_header::{parse, ProxyHeader, MAX_HEADER_LEN};

    /// One input.
    pub fn run(data: &[u8]) {
        match parse(data) {
            ProxyHeader::Complete { len, client } => {
                assert!(len <= data.len());
                assert_eq!(parse(&data[..len]), ProxyHeader::Complete { len, client });
            }
            ProxyHeader::NeedMore => assert!(data.len() < MAX_HEADER_LEN),
            ProxyHeader::Invalid(_) => {}
        }
    }
}

/// Arbitrary bytes as an ownership proof and an authorize password: the first byte picks the
/// address (P2PKH, P2WPKH, P2SH-P2WPKH, P2TR of one key), the rest is `message\nsignature`.
/// Errors, never panics; a proof accepted for one address is refused for another key's.
/// `cargo fuzz run ownership`
pub mod ownership {
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use bitcoin::{Address, CompressedPublicKey, Network, PublicKey};

    use crate::ownership::verify;
    use crate::worker::{lightning_offer, AuxPayouts};

    fn addresses(byte: u8) -> [Address; 4] {
        let secp = Secp256k1::new();
        let secret = SecretKey::from_slice(&[byte.max(1); 32]).expect("a valid key");
        let public = PublicKey::new(secret.public_key(&secp));
        let compressed = CompressedPublicKey(secret.public_key(&secp));
        let (xonly, _) = secret.public_key(&secp).x_only_public_key();
        [
            Address::p2pkh(public, Network::Regtest),
            Address::p2wpkh(&compressed, Network::Regtest),
            Address::p2shwpkh(&compressed, Network::Regtest),
            Address::p2tr(&secp, xonly, None, Network::Regtest),
        ]
    }

    /// One input.
    pub fn run(data: &[u8]) {
        let Some((&pick, rest)) = data.split_first() else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        let _ = lightning_offer(&text);
        let _ = AuxPayouts::from_password(&text);
        let (message, signature) = text.split_once('\n').unwrap_or((&text, ""));
        let ours = &addresses(7)[usize::from(pick % 4)];
        if verify(ours, message, signature).is_ok() {
            let theirs = &addresses(8)[usize::from(pick % 4)];
            assert!(
                verify(theirs, message, signature).is_err(),
                "one proof, two keys"
            );
        }
    }
}
