//! Noise NX (`Noise_NX_Secp256k1+EllSwift_ChaChaPoly_SHA256`) around SV2 frames, sans-IO.
//!
//! The cryptography is SRI's `noise_sv2`; this module only moves bytes: the two handshake acts
//! (64 bytes from the initiator, 234 back from the responder, both unframed) and then each frame
//! as an encrypted header (6 + 16 bytes) followed by the payload in encrypted chunks of at most
//! 65,519 plaintext bytes plus a 16-byte MAC each.

use noise_sv2::{Initiator, NoiseDecryptor, NoiseEncryptor, Responder};
use thiserror::Error;

use super::frame::{Frame, Header, HEADER_LEN};
use super::keys::AuthorityKeypair;

/// ChaCha20-Poly1305 tag.
pub const MAC_LEN: usize = 16;
/// Act 1: the initiator's ElligatorSwift-encoded ephemeral key.
pub const ACT1_LEN: usize = 64;
/// Act 2: ephemeral key, encrypted static key, encrypted certificate.
pub const ACT2_LEN: usize = noise_sv2::INITIATOR_EXPECTED_HANDSHAKE_MESSAGE_SIZE;
/// An encrypted frame header.
pub const ENCRYPTED_HEADER_LEN: usize = HEADER_LEN + MAC_LEN;
/// Plaintext bytes per encrypted payload chunk.
pub const PLAINTEXT_CHUNK: usize = 65_535 - MAC_LEN;

/// Why the encrypted stream failed. Every one of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoiseError {
    /// The handshake bytes did not decrypt.
    #[error("noise handshake failed: {0}")]
    Handshake(String),
    /// The server's certificate is not signed by the expected authority, or is outside its
    /// validity window.
    #[error(
        "the server's certificate does not verify against the authority key (wrong key or expired)"
    )]
    Certificate,
    /// A frame's MAC did not verify.
    #[error("decryption failed (bad MAC)")]
    Mac,
    /// A frame larger than this connection accepts.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Declared payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Encrypted length of a payload of `len` plaintext bytes.
pub fn encrypted_payload_len(len: usize) -> usize {
    len + len.div_ceil(PLAINTEXT_CHUNK) * MAC_LEN
}

/// An established encrypted session: frames in, bytes out, and back.
pub struct Transport {
    encryptor: NoiseEncryptor,
    decryptor: NoiseDecryptor,
    rx: Vec<u8>,
    /// Bytes of `rx` already consumed.
    rx_start: usize,
    /// The decrypted header of the frame whose payload is awaited.
    header: Option<Header>,
    max_payload: usize,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("buffered", &(self.rx.len() - self.rx_start))
            .field("max_payload", &self.max_payload)
            .finish()
    }
}

impl Transport {
    fn new(engine: noise_sv2::NoiseEngine, max_payload: usize) -> Self {
        let (encryptor, decryptor) = engine.into_split();
        Transport {
            encryptor,
            decryptor,
            rx: Vec::new(),
            rx_start: 0,
            header: None,
            max_payload,
            scratch: Vec::new(),
        }
    }

    /// Encrypts one frame onto `out`.
    pub fn encrypt(&mut self, frame_bytes: &[u8], out: &mut Vec<u8>) {
        let (head, payload) = frame_bytes.split_at(HEADER_LEN.min(frame_bytes.len()));
        self.seal(head, out);
        for chunk in payload.chunks(PLAINTEXT_CHUNK) {
            self.seal(chunk, out);
        }
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        self.scratch.clear();
        self.scratch.extend_from_slice(plain);
        // Encryption only fails when the 2^64 nonce space is exhausted.
        if self.encryptor.encrypt(&mut self.scratch).is_ok() {
            out.extend_from_slice(&self.scratch);
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.rx_start > 0 && self.rx_start == self.rx.len() {
            self.rx.clear();
            self.rx_start = 0;
        }
        self.rx.extend_from_slice(data);
    }

    /// The next complete frame, decrypted.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, NoiseError> {
        let header = match self.header {
            Some(header) => header,
            None => {
                let Some(sealed) = self
                    .rx
                    .get(self.rx_start..self.rx_start + ENCRYPTED_HEADER_LEN)
                else {
                    return Ok(None);
                };
                let mut plain = sealed.to_vec();
                self.decryptor
                    .decrypt(&mut plain)
                    .map_err(|_| NoiseError::Mac)?;
                self.rx_start += ENCRYPTED_HEADER_LEN;
                let mut bytes = [0u8; HEADER_LEN];
                bytes.copy_from_slice(&plain[..HEADER_LEN]);
                let header = Header::parse(&bytes);
                if header.length as usize > self.max_payload {
                    return Err(NoiseError::FrameTooLarge {
                        len: header.length as usize,
                        max: self.max_payload,
                    });
                }
                self.header = Some(header);
                header
            }
        };
        let len = header.length as usize;
        let sealed_len = encrypted_payload_len(len);
        if self.rx.len() - self.rx_start < sealed_len {
            return Ok(None);
        }
        let mut payload = Vec::with_capacity(len);
        let sealed = &self.rx[self.rx_start..self.rx_start + sealed_len];
        for chunk in sealed.chunks(PLAINTEXT_CHUNK + MAC_LEN) {
            let mut plain = chunk.to_vec();
            self.decryptor
                .decrypt(&mut plain)
                .map_err(|_| NoiseError::Mac)?;
            payload.extend_from_slice(&plain);
        }
        self.rx_start += sealed_len;
        self.header = None;
        if self.rx_start == self.rx.len() {
            self.rx.clear();
            self.rx_start = 0;
        } else if self.rx_start > 64 * 1024 {
            self.rx.drain(..self.rx_start);
            self.rx_start = 0;
        }
        Ok(Some(Frame { header, payload }))
    }
}

/// The server side of the handshake.
pub struct ResponderHandshake {
    responder: Box<Responder>,
    max_payload: usize,
}

impl std::fmt::Debug for ResponderHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponderHandshake")
    }
}

impl ResponderHandshake {
    /// A responder whose per-connection static key is certified by `authority` for
    /// `validity_secs` from the time of the handshake.
    pub fn new(
        authority: &AuthorityKeypair,
        validity_secs: u32,
        max_payload: usize,
    ) -> Result<Self, NoiseError> {
        let responder = Responder::from_authority_kp(
            &authority.public,
            &authority.secret,
            std::time::Duration::from_secs(u64::from(validity_secs)),
        )
        .map_err(|e| NoiseError::Handshake(format!("{e:?}")))?;
        Ok(ResponderHandshake {
            responder,
            max_payload,
        })
    }

    /// Answers act 1; `now_secs` starts the certificate's validity.
    pub fn respond(
        mut self,
        act1: &[u8; ACT1_LEN],
        now_secs: u32,
    ) -> Result<([u8; ACT2_LEN], Transport), NoiseError> {
        let (act2, engine) = self
            .responder
            .step_1_with_now_rng(*act1, now_secs, &mut rand::thread_rng())
            .map_err(|e| NoiseError::Handshake(format!("{e:?}")))?;
        Ok((act2, Transport::new(engine, self.max_payload)))
    }
}

/// The server end of a connection: gathers act 1, answers with act 2, then carries frames.
/// Shared by every SV2 role Quarry serves (pool, Template Provider).
#[derive(Debug)]
pub struct ResponderLink {
    handshake: Option<ResponderHandshake>,
    act1: Vec<u8>,
    transport: Option<Transport>,
}

impl ResponderLink {
    /// A link waiting for act 1.
    pub fn new(handshake: ResponderHandshake) -> Self {
        ResponderLink {
            handshake: Some(handshake),
            act1: Vec::with_capacity(ACT1_LEN),
            transport: None,
        }
    }

    /// Whether the handshake is done and frames flow.
    pub fn is_open(&self) -> bool {
        self.transport.is_some()
    }

    /// Bytes from the initiator. Completing act 1 appends act 2 to `out`; bytes after it are
    /// kept for [`ResponderLink::next_frame`].
    ///
    /// # Errors
    /// A handshake that fails.
    pub fn push(
        &mut self,
        mut data: &[u8],
        now_secs: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        if self.transport.is_none() {
            let take = (ACT1_LEN - self.act1.len()).min(data.len());
            self.act1.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.act1.len() < ACT1_LEN {
                return Ok(());
            }
            let mut act1 = [0u8; ACT1_LEN];
            act1.copy_from_slice(&self.act1);
            let handshake = self
                .handshake
                .take()
                .ok_or_else(|| NoiseError::Handshake("handshake already failed".into()))?;
            let (act2, transport) = handshake.respond(&act1, now_secs)?;
            out.extend_from_slice(&act2);
            self.act1 = Vec::new();
            self.transport = Some(transport);
        }
        if let Some(transport) = &mut self.transport {
            transport.push(data);
        }
        Ok(())
    }

    /// The next complete frame, if any (none during the handshake).
    ///
    /// # Errors
    /// See [`Transport::next_frame`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, NoiseError> {
        match &mut self.transport {
            Some(transport) => transport.next_frame(),
            None => Ok(None),
        }
    }

    /// Encrypts one plaintext frame into `out`; nothing before the handshake is done.
    pub fn encrypt(&mut self, frame_bytes: &[u8], out: &mut Vec<u8>) {
        if let Some(transport) = &mut self.transport {
            transport.encrypt(frame_bytes, out);
        }
    }

    /// Changes the largest frame accepted from here on (a protocol chosen at setup may need
    /// larger frames than the handshake allowed).
    pub fn set_max_payload(&mut self, max_payload: usize) {
        if let Some(transport) = &mut self.transport {
            transport.max_payload = max_payload;
        }
    }
}

/// The client side of the handshake.
pub struct InitiatorHandshake {
    initiator: Box<Initiator>,
    max_payload: usize,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InitiatorHandshake")
    }
}

impl InitiatorHandshake {
    /// An initiator that accepts only servers certified by `authority_public` (x-only key).
    pub fn new(authority_public: &[u8; 32], max_payload: usize) -> Result<Self, NoiseError> {
        let initiator = Initiator::from_raw_k(*authority_public)
            .map_err(|e| NoiseError::Handshake(format!("{e:?}")))?;
        Ok(InitiatorHandshake {
            initiator,
            max_payload,
        })
    }

    /// Act 1, to send first.
    pub fn start(&mut self) -> Result<[u8; ACT1_LEN], NoiseError> {
        self.initiator
            .step_0()
            .map_err(|e| NoiseError::Handshake(format!("{e:?}")))
    }

    /// Checks act 2 and the certificate in it at `now_secs`.
    pub fn finish(mut self, act2: &[u8; ACT2_LEN], now_secs: u32) -> Result<Transport, NoiseError> {
        match self.initiator.step_2_with_now(*act2, now_secs) {
            Ok(engine) => Ok(Transport::new(engine, self.max_payload)),
            Err(noise_sv2::Error::InvalidCertificate(_)) => Err(NoiseError::Certificate),
            Err(e) => Err(NoiseError::Handshake(format!("{e:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::frame::CHANNEL_BIT;

    fn pair(
        authority: &AuthorityKeypair,
        trusted: &[u8; 32],
        now: u32,
        then: u32,
    ) -> Result<(Transport, Transport), NoiseError> {
        let mut initiator = InitiatorHandshake::new(trusted, 1 << 20)?;
        let act1 = initiator.start()?;
        let responder = ResponderHandshake::new(authority, 3600, 1 << 20)?;
        let (act2, server) = responder.respond(&act1, now)?;
        let client = initiator.finish(&act2, then)?;
        Ok((client, server))
    }

    fn frame(len: usize) -> Frame {
        Frame {
            header: Header {
                extension_type: CHANNEL_BIT,
                msg_type: 0x1b,
                length: len as u32,
            },
            payload: (0..len).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn frames_cross_in_both_directions_and_in_pieces() {
        let authority = AuthorityKeypair::generate();
        let (mut client, mut server) =
            pair(&authority, &authority.public, 1_700_000_000, 1_700_000_000).expect("handshake");
        for len in [0, 1, 100, PLAINTEXT_CHUNK, PLAINTEXT_CHUNK + 1, 200_000] {
            let sent = frame(len);
            let mut wire = Vec::new();
            client.encrypt(&sent.to_bytes(), &mut wire);
            assert_eq!(
                wire.len(),
                ENCRYPTED_HEADER_LEN + encrypted_payload_len(len)
            );
            // Byte by byte for small frames, in two halves for big ones.
            if len < 200 {
                for byte in &wire[..wire.len() - 1] {
                    server.push(std::slice::from_ref(byte));
                    assert_eq!(server.next_frame(), Ok(None));
                }
                server.push(&wire[wire.len() - 1..]);
            } else {
                server.push(&wire[..wire.len() / 2]);
                assert_eq!(server.next_frame(), Ok(None));
                server.push(&wire[wire.len() / 2..]);
            }
            assert_eq!(server.next_frame(), Ok(Some(sent.clone())));
            let mut back = Vec::new();
            server.encrypt(&sent.to_bytes(), &mut back);
            client.push(&back);
            assert_eq!(client.next_frame(), Ok(Some(sent)));
        }
    }

    #[test]
    fn wrong_authority_is_refused() {
        let authority = AuthorityKeypair::generate();
        let other = AuthorityKeypair::generate();
        let now = 1_700_000_000;
        assert_eq!(
            pair(&authority, &other.public, now, now).err(),
            Some(NoiseError::Certificate)
        );
    }

    #[test]
    fn expired_certificate_is_refused() {
        let authority = AuthorityKeypair::generate();
        let issued = 1_700_000_000;
        // Valid for an hour, checked two hours later (beyond the 10 s leeway).
        assert_eq!(
            pair(&authority, &authority.public, issued, issued + 7200).err(),
            Some(NoiseError::Certificate)
        );
        // And not yet valid: issued in the future.
        assert_eq!(
            pair(&authority, &authority.public, issued + 600, issued).err(),
            Some(NoiseError::Certificate)
        );
        assert!(pair(&authority, &authority.public, issued, issued + 3000).is_ok());
    }

    #[test]
    fn tampering_and_oversize_are_errors() {
        let authority = AuthorityKeypair::generate();
        let now = 1_700_000_000;
        let (mut client, mut server) = pair(&authority, &authority.public, now, now).expect("ok");
        let mut wire = Vec::new();
        client.encrypt(&frame(10).to_bytes(), &mut wire);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        server.push(&wire);
        assert_eq!(server.next_frame(), Err(NoiseError::Mac));

        let (mut client, mut server) = pair(&authority, &authority.public, now, now).expect("ok");
        server.max_payload = 100;
        let mut wire = Vec::new();
        client.encrypt(&frame(101).to_bytes(), &mut wire);
        server.push(&wire);
        assert_eq!(
            server.next_frame(),
            Err(NoiseError::FrameTooLarge { len: 101, max: 100 })
        );
    }
}
