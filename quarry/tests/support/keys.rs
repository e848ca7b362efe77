//! Keys the tests hold, so that Bitcoin Core without a wallet still gets real segwit traffic:
//! coinbases are mined to a key of ours, and their spends are signed here with rust-bitcoin
//! (P2WPKH with ECDSA, P2TR key path with Schnorr) and sent with `sendrawtransaction`.

use bitcoin::absolute::LockTime;
use bitcoin::hashes::Hash;
use bitcoin::key::{Keypair, TapTweak};
use bitcoin::secp256k1::{rand, All, Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, Prevouts, SighashCache, TapSighashType};
use bitcoin::transaction::Version;
use bitcoin::{
    Address, Amount, CompressedPublicKey, Network, OutPoint, ScriptBuf, Sequence, Transaction,
    TxIn, TxOut, Txid, Witness,
};
use serde_json::{json, Value};

use super::Regtest;

/// What an output of ours pays to, and so how it is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spk {
    P2wpkh,
    P2tr,
}

/// A secp256k1 key and the two segwit scripts it controls.
pub struct TestKey {
    secp: Secp256k1<All>,
    secret: SecretKey,
    public: CompressedPublicKey,
    keypair: Keypair,
}

impl TestKey {
    pub fn random() -> TestKey {
        let secp = Secp256k1::new();
        let secret = SecretKey::new(&mut rand::thread_rng());
        let public = CompressedPublicKey(secret.public_key(&secp));
        let keypair = Keypair::from_secret_key(&secp, &secret);
        TestKey {
            secp,
            secret,
            public,
            keypair,
        }
    }

    pub fn address(&self, spk: Spk) -> Address {
        match spk {
            Spk::P2wpkh => Address::p2wpkh(&self.public, Network::Regtest),
            Spk::P2tr => {
                let (xonly, _) = self.keypair.x_only_public_key();
                Address::p2tr(&self.secp, xonly, None, Network::Regtest)
            }
        }
    }

    /// The secret key in WIF (regtest), as wallets export it.
    pub fn wif(&self) -> String {
        bitcoin::PrivateKey::new(self.secret, Network::Regtest).to_wif()
    }

    pub fn p2wpkh_address(&self) -> String {
        self.address(Spk::P2wpkh).to_string()
    }

    pub fn script(&self, spk: Spk) -> ScriptBuf {
        self.address(spk).script_pubkey()
    }

    /// Signs every input of `tx`, each spending the matching entry of `spent`.
    pub fn sign(&self, tx: &mut Transaction, spent: &[Coin]) {
        let prevouts: Vec<TxOut> = spent
            .iter()
            .map(|c| TxOut {
                value: c.value,
                script_pubkey: self.script(c.spk),
            })
            .collect();
        let mut cache = SighashCache::new(tx);
        for (index, coin) in spent.iter().enumerate() {
            let witness = match coin.spk {
                Spk::P2wpkh => {
                    let sighash = cache
                        .p2wpkh_signature_hash(
                            index,
                            &prevouts[index].script_pubkey,
                            coin.value,
                            EcdsaSighashType::All,
                        )
                        .expect("p2wpkh sighash");
                    let message = Message::from_digest(sighash.to_byte_array());
                    let signature = bitcoin::ecdsa::Signature {
                        signature: self.secp.sign_ecdsa(&message, &self.secret),
                        sighash_type: EcdsaSighashType::All,
                    };
                    Witness::p2wpkh(&signature, &self.public.0)
                }
                Spk::P2tr => {
                    let sighash = cache
                        .taproot_key_spend_signature_hash(
                            index,
                            &Prevouts::All(&prevouts),
                            TapSighashType::Default,
                        )
                        .expect("taproot sighash");
                    let message = Message::from_digest(sighash.to_byte_array());
                    let tweaked = self.keypair.tap_tweak(&self.secp, None);
                    let signature = bitcoin::taproot::Signature {
                        signature: self.secp.sign_schnorr(&message, &tweaked.to_keypair()),
                        sighash_type: TapSighashType::Default,
                    };
                    Witness::p2tr_key_spend(&signature)
                }
            };
            *cache.witness_mut(index).expect("input exists") = witness;
        }
    }
}

/// An output of ours.
#[derive(Debug, Clone, Copy)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub value: Amount,
    pub spk: Spk,
}

/// Mines `count` blocks whose coinbases pay `key`, then 100 more to the node's mining address so
/// that they mature. Returns the coinbase outputs.
pub async fn fund(nodes: &Regtest, key: &TestKey, count: usize) -> Vec<Coin> {
    let address = key.p2wpkh_address();
    let script = hex::encode(key.script(Spk::P2wpkh).as_bytes());
    let hashes = nodes
        .rpc_ok('A', "generatetoaddress", json!([count, address]))
        .await;
    let mut coins = Vec::with_capacity(count);
    for hash in hashes.as_array().expect("block hashes") {
        let block = nodes.rpc_ok('A', "getblock", json!([hash, 2])).await;
        let coinbase = &block["tx"][0];
        let txid: Txid = coinbase["txid"]
            .as_str()
            .expect("txid")
            .parse()
            .expect("txid hex");
        let (vout, out) = coinbase["vout"]
            .as_array()
            .expect("outputs")
            .iter()
            .enumerate()
            .find(|(_, o)| o["scriptPubKey"]["hex"].as_str() == Some(script.as_str()))
            .expect("the coinbase pays our key");
        coins.push(Coin {
            outpoint: OutPoint::new(txid, vout as u32),
            value: btc(&out["value"]),
            spk: Spk::P2wpkh,
        });
    }
    nodes
        .rpc_ok(
            'A',
            "generatetoaddress",
            json!([100, nodes.var("MINING_ADDRESS")]),
        )
        .await;
    coins
}

fn btc(value: &Value) -> Amount {
    Amount::from_btc(value.as_f64().expect("an amount")).expect("a valid amount")
}

/// Fills the mempool from `coins`: each coin is split by a P2WPKH spend into `fanout` outputs,
/// alternately P2WPKH and P2TR, and each of those is spent again on its own (key-path spends for
/// the P2TR ones), so the mempool holds parents and children with witness data. Returns every
/// txid sent, `coins.len() * (fanout + 1)` of them.
pub async fn fill_mempool(
    nodes: &Regtest,
    key: &TestKey,
    coins: &[Coin],
    fanout: u64,
) -> Vec<Txid> {
    const FEE: Amount = Amount::from_sat(2_000);
    let mut sent = Vec::new();
    for coin in coins {
        let share = (coin.value - FEE) / fanout;
        let outputs: Vec<(Spk, TxOut)> = (0..fanout)
            .map(|i| {
                let spk = if i % 2 == 0 { Spk::P2wpkh } else { Spk::P2tr };
                (
                    spk,
                    TxOut {
                        value: share,
                        script_pubkey: key.script(spk),
                    },
                )
            })
            .collect();
        let parent = spend(
            nodes,
            key,
            &[*coin],
            outputs.iter().map(|(_, o)| o.clone()).collect(),
        )
        .await;
        sent.push(parent);
        for (vout, (spk, out)) in outputs.iter().enumerate() {
            let coin = Coin {
                outpoint: OutPoint::new(parent, vout as u32),
                value: out.value,
                spk: *spk,
            };
            let back = TxOut {
                value: out.value - FEE,
                script_pubkey: key.script(Spk::P2wpkh),
            };
            sent.push(spend(nodes, key, &[coin], vec![back]).await);
        }
    }
    sent
}

async fn spend(nodes: &Regtest, key: &TestKey, coins: &[Coin], output: Vec<TxOut>) -> Txid {
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: coins
            .iter()
            .map(|c| TxIn {
                previous_output: c.outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output,
    };
    key.sign(&mut tx, coins);
    let hex = bitcoin::consensus::encode::serialize_hex(&tx);
    let txid = nodes.rpc_ok('A', "sendrawtransaction", json!([hex])).await;
    assert_eq!(
        txid.as_str(),
        Some(tx.compute_txid().to_string().as_str()),
        "Core took the transaction"
    );
    tx.compute_txid()
}
