//! Arbitrary bytes into an SV2 pool session, both raw (handshake bytes, garbage) and as frames
//! encrypted after a real handshake: never a panic; a session either keeps going or closes
//! with a reason. `cargo fuzz run sv2_session`
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use quarry_stratum::v1::SessionConfig;
use quarry_stratum::v2::noise::InitiatorHandshake;
use quarry_stratum::v2::{AuthorityKeypair, PoolSession, Sv2Config};

fuzz_target!(|data: &[u8]| {
    // The server's own pool state, from the test kit; a 3-byte prefix leaves one byte of ids
    // (256), so a long input can also run the extranonce space out.
    let pool = quarry_stratum::testkit::pool_with_prefix(vec![0, 0, 0]);
    let authority = AuthorityKeypair::from_secret_bytes(&[7; 32]).expect("valid key");
    let config = Arc::new(SessionConfig::default());
    let sv2 = Arc::new(Sv2Config::new(authority.clone()));
    let now = quarry_stratum::Now::synced(1_800_000_000_000);

    // Raw bytes from the first byte on.
    let mut raw = PoolSession::new(Arc::clone(&config), Arc::clone(&sv2), now);
    for chunk in data.chunks(97) {
        raw.handle_bytes(chunk, now, &pool);
    }
    raw.handle_timeout(now.plus_ms(3_600_000), &pool);

    // The same bytes as plaintext frames inside a real session.
    let mut session = PoolSession::new(config, sv2, now);
    let mut initiator = InitiatorHandshake::new(&authority.public, 1 << 20).expect("key");
    let act1 = initiator.start().expect("act1");
    session.handle_bytes(&act1, now, &pool);
    let act2 = session.poll_transmit().expect("act2");
    let Ok(act2) = act2.try_into() else { return };
    let mut transport = initiator.finish(&act2, now.unix_secs() as u32).expect("trusted");
    let mut wire = Vec::new();
    for frame in data.split(|b| *b == 0xff) {
        if frame.len() >= 6 {
            let mut fixed = frame.to_vec();
            let len = (frame.len() - 6) as u32;
            fixed[3..6].copy_from_slice(&len.to_le_bytes()[..3]);
            transport.encrypt(&fixed, &mut wire);
        }
    }
    session.handle_bytes(&wire, now, &pool);
    while session.awaiting_record() > 0 {
        session.share_recorded(data.first().is_none_or(|b| b % 7 != 0));
    }
    while session.poll_transmit().is_some() {}
    while session.poll_event().is_some() {}
});
