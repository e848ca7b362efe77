//! Arbitrary bytes as an AuxPoW, as RSK work and as a coinbase: errors, never panics, and every
//! AuxPoW that decodes encodes back to the same bytes. `cargo fuzz run auxpow`
#![no_main]

use libfuzzer_sys::fuzz_target;
use quarry_work::auxpow::{meets_target, AuxHash, AuxPow, ChainId};
use quarry_work::rsk::{check_coinbase, partial_merkle_params, RskWork};
use quarry_work::Target;

/// A fixed aux hash: in a one-chain tree its display bytes are the root the scriptSig needs,
/// which the fuzzer can find.
const AUX_HASH: AuxHash = AuxHash::from_internal([0x42; 32]);

fuzz_target!(|data: &[u8]| {
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
});
