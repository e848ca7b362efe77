//! SV2 messages: the Common, Mining and Template Distribution protocols, as plain owned structs.
//!
//! Field order and types follow sv2-spec and SRI's `common_messages_sv2` 9, `mining_sv2` 12 and
//! `template_distribution_sv2` 7, which is what the wire carries today.

use super::frame::{Frame, Header, CHANNEL_BIT};
use super::wire::{Reader, WireError, Writer};

/// Message type numbers.
pub mod types {
    #![allow(missing_docs)]
    pub const SETUP_CONNECTION: u8 = 0x00;
    pub const SETUP_CONNECTION_SUCCESS: u8 = 0x01;
    pub const SETUP_CONNECTION_ERROR: u8 = 0x02;
    pub const CHANNEL_ENDPOINT_CHANGED: u8 = 0x03;
    pub const RECONNECT: u8 = 0x04;
    pub const OPEN_STANDARD_MINING_CHANNEL: u8 = 0x10;
    pub const OPEN_STANDARD_MINING_CHANNEL_SUCCESS: u8 = 0x11;
    pub const OPEN_MINING_CHANNEL_ERROR: u8 = 0x12;
    pub const OPEN_EXTENDED_MINING_CHANNEL: u8 = 0x13;
    pub const OPEN_EXTENDED_MINING_CHANNEL_SUCCESS: u8 = 0x14;
    pub const NEW_MINING_JOB: u8 = 0x15;
    pub const UPDATE_CHANNEL: u8 = 0x16;
    pub const UPDATE_CHANNEL_ERROR: u8 = 0x17;
    pub const CLOSE_CHANNEL: u8 = 0x18;
    pub const SET_EXTRANONCE_PREFIX: u8 = 0x19;
    pub const SUBMIT_SHARES_STANDARD: u8 = 0x1a;
    pub const SUBMIT_SHARES_EXTENDED: u8 = 0x1b;
    pub const SUBMIT_SHARES_SUCCESS: u8 = 0x1c;
    pub const SUBMIT_SHARES_ERROR: u8 = 0x1d;
    pub const NEW_EXTENDED_MINING_JOB: u8 = 0x1f;
    pub const MINING_SET_NEW_PREV_HASH: u8 = 0x20;
    pub const SET_TARGET: u8 = 0x21;
    pub const SET_CUSTOM_MINING_JOB: u8 = 0x22;
    pub const SET_CUSTOM_MINING_JOB_SUCCESS: u8 = 0x23;
    pub const SET_CUSTOM_MINING_JOB_ERROR: u8 = 0x24;
    pub const SET_GROUP_CHANNEL: u8 = 0x25;
    // Job Declaration (job_declaration_sv2 10, as SRI's jd_client_sv2 0.6.0 speaks it).
    pub const ALLOCATE_MINING_JOB_TOKEN: u8 = 0x50;
    pub const ALLOCATE_MINING_JOB_TOKEN_SUCCESS: u8 = 0x51;
    pub const PROVIDE_MISSING_TRANSACTIONS: u8 = 0x55;
    pub const PROVIDE_MISSING_TRANSACTIONS_SUCCESS: u8 = 0x56;
    pub const DECLARE_MINING_JOB: u8 = 0x57;
    pub const DECLARE_MINING_JOB_SUCCESS: u8 = 0x58;
    pub const DECLARE_MINING_JOB_ERROR: u8 = 0x59;
    pub const PUSH_SOLUTION: u8 = 0x60;
    pub const COINBASE_OUTPUT_CONSTRAINTS: u8 = 0x70;
    pub const NEW_TEMPLATE: u8 = 0x71;
    pub const SET_NEW_PREV_HASH: u8 = 0x72;
    pub const REQUEST_TRANSACTION_DATA: u8 = 0x73;
    pub const REQUEST_TRANSACTION_DATA_SUCCESS: u8 = 0x74;
    pub const REQUEST_TRANSACTION_DATA_ERROR: u8 = 0x75;
    pub const SUBMIT_SOLUTION: u8 = 0x76;
}

/// SetupConnection.protocol values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Mining Protocol.
    Mining,
    /// Job Declaration Protocol.
    JobDeclaration,
    /// Template Distribution Protocol.
    TemplateDistribution,
    /// Anything else.
    Other(u8),
}

impl Protocol {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Protocol::Mining,
            1 => Protocol::JobDeclaration,
            2 => Protocol::TemplateDistribution,
            other => Protocol::Other(other),
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            Protocol::Mining => 0,
            Protocol::JobDeclaration => 1,
            Protocol::TemplateDistribution => 2,
            Protocol::Other(v) => v,
        }
    }
}

/// SetupConnection flags of the Mining protocol (downstream → upstream).
pub mod flags {
    /// Only header-only (standard) jobs.
    pub const REQUIRES_STANDARD_JOBS: u32 = 1 << 0;
    /// The miner selects its own work (Job Declaration).
    pub const REQUIRES_WORK_SELECTION: u32 = 1 << 1;
    /// The miner needs version rolling.
    pub const REQUIRES_VERSION_ROLLING: u32 = 1 << 2;
    /// SetupConnection.Success: the pool does not allow version rolling.
    pub const REQUIRES_FIXED_VERSION: u32 = 1 << 0;
    /// SetupConnection.Success: the pool serves extended channels only.
    pub const REQUIRES_EXTENDED_CHANNELS: u32 = 1 << 1;
}

/// SetupConnection.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupConnection {
    /// Sub-protocol.
    pub protocol: Protocol,
    /// Lowest version supported.
    pub min_version: u16,
    /// Highest version supported.
    pub max_version: u16,
    /// Feature flags.
    pub flags: u32,
    /// Host the client connected to.
    pub endpoint_host: String,
    /// Port the client connected to.
    pub endpoint_port: u16,
    /// Vendor.
    pub vendor: String,
    /// Hardware version.
    pub hardware_version: String,
    /// Firmware.
    pub firmware: String,
    /// Device id.
    pub device_id: String,
}

/// A 32-byte target, little-endian (U256).
pub type Target256 = [u8; 32];

/// Every message Quarry sends or understands.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Message {
    SetupConnection(SetupConnection),
    SetupConnectionSuccess {
        used_version: u16,
        flags: u32,
    },
    SetupConnectionError {
        flags: u32,
        error_code: String,
    },
    ChannelEndpointChanged {
        channel_id: u32,
    },
    Reconnect {
        new_host: String,
        new_port: u16,
    },
    OpenStandardMiningChannel {
        request_id: u32,
        user_identity: String,
        nominal_hash_rate: f32,
        max_target: Target256,
    },
    OpenStandardMiningChannelSuccess {
        request_id: u32,
        channel_id: u32,
        target: Target256,
        extranonce_prefix: Vec<u8>,
        group_channel_id: u32,
    },
    OpenMiningChannelError {
        request_id: u32,
        error_code: String,
    },
    OpenExtendedMiningChannel {
        request_id: u32,
        user_identity: String,
        nominal_hash_rate: f32,
        max_target: Target256,
        min_extranonce_size: u16,
    },
    OpenExtendedMiningChannelSuccess {
        request_id: u32,
        channel_id: u32,
        target: Target256,
        extranonce_size: u16,
        extranonce_prefix: Vec<u8>,
        group_channel_id: u32,
    },
    NewMiningJob {
        channel_id: u32,
        job_id: u32,
        min_ntime: Option<u32>,
        version: u32,
        merkle_root: [u8; 32],
    },
    UpdateChannel {
        channel_id: u32,
        nominal_hash_rate: f32,
        maximum_target: Target256,
    },
    UpdateChannelError {
        channel_id: u32,
        error_code: String,
    },
    CloseChannel {
        channel_id: u32,
        reason_code: String,
    },
    SetExtranoncePrefix {
        channel_id: u32,
        extranonce_prefix: Vec<u8>,
    },
    SubmitSharesStandard {
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
    },
    SubmitSharesExtended {
        channel_id: u32,
        sequence_number: u32,
        job_id: u32,
        nonce: u32,
        ntime: u32,
        version: u32,
        extranonce: Vec<u8>,
    },
    SubmitSharesSuccess {
        channel_id: u32,
        last_sequence_number: u32,
        new_submits_accepted_count: u32,
        new_shares_sum: u64,
    },
    SubmitSharesError {
        channel_id: u32,
        sequence_number: u32,
        error_code: String,
    },
    NewExtendedMiningJob {
        channel_id: u32,
        job_id: u32,
        min_ntime: Option<u32>,
        version: u32,
        version_rolling_allowed: bool,
        merkle_path: Vec<[u8; 32]>,
        coinbase_tx_prefix: Vec<u8>,
        coinbase_tx_suffix: Vec<u8>,
    },
    SetNewPrevHash {
        channel_id: u32,
        job_id: u32,
        prev_hash: [u8; 32],
        min_ntime: u32,
        nbits: u32,
    },
    SetTarget {
        channel_id: u32,
        maximum_target: Target256,
    },
    SetGroupChannel {
        group_channel_id: u32,
        channel_ids: Vec<u32>,
    },
    /// A job the miner built (Job Declaration), on an extended channel.
    SetCustomMiningJob {
        channel_id: u32,
        request_id: u32,
        token: Vec<u8>,
        version: u32,
        prev_hash: [u8; 32],
        min_ntime: u32,
        nbits: u32,
        coinbase_tx_version: u32,
        coinbase_prefix: Vec<u8>,
        coinbase_tx_input_n_sequence: u32,
        coinbase_tx_outputs: Vec<u8>,
        coinbase_tx_locktime: u32,
        merkle_path: Vec<[u8; 32]>,
    },
    SetCustomMiningJobSuccess {
        channel_id: u32,
        request_id: u32,
        job_id: u32,
    },
    SetCustomMiningJobError {
        channel_id: u32,
        request_id: u32,
        error_code: String,
    },
    AllocateMiningJobToken {
        user_identifier: String,
        request_id: u32,
    },
    AllocateMiningJobTokenSuccess {
        request_id: u32,
        mining_job_token: Vec<u8>,
        /// The outputs the pool requires in the coinbase (serialized, without a count).
        coinbase_outputs: Vec<u8>,
    },
    DeclareMiningJob {
        request_id: u32,
        mining_job_token: Vec<u8>,
        version: u32,
        coinbase_tx_prefix: Vec<u8>,
        coinbase_tx_suffix: Vec<u8>,
        wtxid_list: Vec<[u8; 32]>,
        excess_data: Vec<u8>,
    },
    DeclareMiningJobSuccess {
        request_id: u32,
        new_mining_job_token: Vec<u8>,
    },
    DeclareMiningJobError {
        request_id: u32,
        error_code: String,
        error_details: Vec<u8>,
    },
    ProvideMissingTransactions {
        request_id: u32,
        unknown_tx_position_list: Vec<u16>,
    },
    ProvideMissingTransactionsSuccess {
        request_id: u32,
        transaction_list: Vec<Vec<u8>>,
    },
    PushSolution {
        extranonce: Vec<u8>,
        prev_hash: [u8; 32],
        nonce: u32,
        ntime: u32,
        nbits: u32,
        version: u32,
    },
    CoinbaseOutputConstraints {
        coinbase_output_max_additional_size: u32,
        coinbase_output_max_additional_sigops: u16,
    },
    NewTemplate {
        template_id: u64,
        future_template: bool,
        version: u32,
        coinbase_tx_version: u32,
        coinbase_prefix: Vec<u8>,
        coinbase_tx_input_sequence: u32,
        coinbase_tx_value_remaining: u64,
        coinbase_tx_outputs_count: u32,
        coinbase_tx_outputs: Vec<u8>,
        coinbase_tx_locktime: u32,
        merkle_path: Vec<[u8; 32]>,
    },
    TemplateSetNewPrevHash {
        template_id: u64,
        prev_hash: [u8; 32],
        header_timestamp: u32,
        n_bits: u32,
        target: Target256,
    },
    RequestTransactionData {
        template_id: u64,
    },
    RequestTransactionDataSuccess {
        template_id: u64,
        excess_data: Vec<u8>,
        transaction_list: Vec<Vec<u8>>,
    },
    RequestTransactionDataError {
        template_id: u64,
        error_code: String,
    },
    SubmitSolution {
        template_id: u64,
        version: u32,
        header_timestamp: u32,
        header_nonce: u32,
        coinbase_tx: Vec<u8>,
    },
}

/// Why a frame is not a message we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An extension we do not implement.
    #[error("unsupported extension 0x{0:04x}")]
    UnknownExtension(u16),
    /// A message type we do not know.
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    /// The channel bit disagrees with the message type.
    #[error("channel bit wrong for message type 0x{0:02x}")]
    ChannelBit(u8),
    /// The payload is malformed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Bytes left over after the message's last field: a framing or encoding error on the
    /// sender's side, never silently ignored.
    #[error("{extra} trailing bytes after message type 0x{msg_type:02x}")]
    TrailingBytes {
        /// The message type.
        msg_type: u8,
        /// How many bytes were left.
        extra: usize,
    },
}

impl Message {
    /// The message type number.
    pub fn msg_type(&self) -> u8 {
        use types::*;
        match self {
            Message::SetupConnection(_) => SETUP_CONNECTION,
            Message::SetupConnectionSuccess { .. } => SETUP_CONNECTION_SUCCESS,
            Message::SetupConnectionError { .. } => SETUP_CONNECTION_ERROR,
            Message::ChannelEndpointChanged { .. } => CHANNEL_ENDPOINT_CHANGED,
            Message::Reconnect { .. } => RECONNECT,
            Message::OpenStandardMiningChannel { .. } => OPEN_STANDARD_MINING_CHANNEL,
            Message::OpenStandardMiningChannelSuccess { .. } => {
                OPEN_STANDARD_MINING_CHANNEL_SUCCESS
            }
            Message::OpenMiningChannelError { .. } => OPEN_MINING_CHANNEL_ERROR,
            Message::OpenExtendedMiningChannel { .. } => OPEN_EXTENDED_MINING_CHANNEL,
            Message::OpenExtendedMiningChannelSuccess { .. } => {
                OPEN_EXTENDED_MINING_CHANNEL_SUCCESS
            }
            Message::NewMiningJob { .. } => NEW_MINING_JOB,
            Message::UpdateChannel { .. } => UPDATE_CHANNEL,
            Message::UpdateChannelError { .. } => UPDATE_CHANNEL_ERROR,
            Message::CloseChannel { .. } => CLOSE_CHANNEL,
            Message::SetExtranoncePrefix { .. } => SET_EXTRANONCE_PREFIX,
            Message::SubmitSharesStandard { .. } => SUBMIT_SHARES_STANDARD,
            Message::SubmitSharesExtended { .. } => SUBMIT_SHARES_EXTENDED,
            Message::SubmitSharesSuccess { .. } => SUBMIT_SHARES_SUCCESS,
            Message::SubmitSharesError { .. } => SUBMIT_SHARES_ERROR,
            Message::NewExtendedMiningJob { .. } => NEW_EXTENDED_MINING_JOB,
            Message::SetNewPrevHash { .. } => MINING_SET_NEW_PREV_HASH,
            Message::SetTarget { .. } => SET_TARGET,
            Message::SetGroupChannel { .. } => SET_GROUP_CHANNEL,
            Message::SetCustomMiningJob { .. } => SET_CUSTOM_MINING_JOB,
            Message::SetCustomMiningJobSuccess { .. } => SET_CUSTOM_MINING_JOB_SUCCESS,
            Message::SetCustomMiningJobError { .. } => SET_CUSTOM_MINING_JOB_ERROR,
            Message::AllocateMiningJobToken { .. } => ALLOCATE_MINING_JOB_TOKEN,
            Message::AllocateMiningJobTokenSuccess { .. } => ALLOCATE_MINING_JOB_TOKEN_SUCCESS,
            Message::DeclareMiningJob { .. } => DECLARE_MINING_JOB,
            Message::DeclareMiningJobSuccess { .. } => DECLARE_MINING_JOB_SUCCESS,
            Message::DeclareMiningJobError { .. } => DECLARE_MINING_JOB_ERROR,
            Message::ProvideMissingTransactions { .. } => PROVIDE_MISSING_TRANSACTIONS,
            Message::ProvideMissingTransactionsSuccess { .. } => {
                PROVIDE_MISSING_TRANSACTIONS_SUCCESS
            }
            Message::PushSolution { .. } => PUSH_SOLUTION,
            Message::CoinbaseOutputConstraints { .. } => COINBASE_OUTPUT_CONSTRAINTS,
            Message::NewTemplate { .. } => NEW_TEMPLATE,
            Message::TemplateSetNewPrevHash { .. } => SET_NEW_PREV_HASH,
            Message::RequestTransactionData { .. } => REQUEST_TRANSACTION_DATA,
            Message::RequestTransactionDataSuccess { .. } => REQUEST_TRANSACTION_DATA_SUCCESS,
            Message::RequestTransactionDataError { .. } => REQUEST_TRANSACTION_DATA_ERROR,
            Message::SubmitSolution { .. } => SUBMIT_SOLUTION,
        }
    }

    /// Whether the spec sets the channel bit for this message type.
    pub fn is_channel_msg(msg_type: u8) -> bool {
        use types::*;
        matches!(
            msg_type,
            CHANNEL_ENDPOINT_CHANGED
                | NEW_MINING_JOB
                | UPDATE_CHANNEL
                | UPDATE_CHANNEL_ERROR
                | CLOSE_CHANNEL
                | SET_EXTRANONCE_PREFIX
                | SUBMIT_SHARES_STANDARD
                | SUBMIT_SHARES_EXTENDED
                | SUBMIT_SHARES_SUCCESS
                | SUBMIT_SHARES_ERROR
                | NEW_EXTENDED_MINING_JOB
                | MINING_SET_NEW_PREV_HASH
                | SET_TARGET
                | SET_CUSTOM_MINING_JOB
                | SET_CUSTOM_MINING_JOB_SUCCESS
                | SET_CUSTOM_MINING_JOB_ERROR
        )
    }

    /// The plaintext frame (header and payload) for this message.
    pub fn to_frame_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.buf.extend_from_slice(&[0; 6]);
        self.write_payload(&mut w);
        let msg_type = self.msg_type();
        let header = Header {
            extension_type: if Self::is_channel_msg(msg_type) {
                CHANNEL_BIT
            } else {
                0
            },
            msg_type,
            length: (w.buf.len() - 6) as u32,
        };
        w.buf[..6].copy_from_slice(&header.encode());
        w.buf
    }

    fn write_payload(&self, w: &mut Writer) {
        match self {
            Message::SetupConnection(s) => {
                w.u8(s.protocol.to_u8())
                    .u16(s.min_version)
                    .u16(s.max_version)
                    .u32(s.flags)
                    .str0_255(&s.endpoint_host)
                    .u16(s.endpoint_port)
                    .str0_255(&s.vendor)
                    .str0_255(&s.hardware_version)
                    .str0_255(&s.firmware)
                    .str0_255(&s.device_id);
            }
            Message::SetupConnectionSuccess {
                used_version,
                flags,
            } => {
                w.u16(*used_version).u32(*flags);
            }
            Message::SetupConnectionError { flags, error_code } => {
                w.u32(*flags).str0_255(error_code);
            }
            Message::ChannelEndpointChanged { channel_id } => {
                w.u32(*channel_id);
            }
            Message::Reconnect { new_host, new_port } => {
                w.str0_255(new_host).u16(*new_port);
            }
            Message::OpenStandardMiningChannel {
                request_id,
                user_identity,
                nominal_hash_rate,
                max_target,
            } => {
                w.u32(*request_id)
                    .str0_255(user_identity)
                    .f32(*nominal_hash_rate)
                    .u256(max_target);
            }
            Message::OpenStandardMiningChannelSuccess {
                request_id,
                channel_id,
                target,
                extranonce_prefix,
                group_channel_id,
            } => {
                w.u32(*request_id)
                    .u32(*channel_id)
                    .u256(target)
                    .b0_32(extranonce_prefix)
                    .u32(*group_channel_id);
            }
            Message::OpenMiningChannelError {
                request_id,
                error_code,
            } => {
                w.u32(*request_id).str0_255(error_code);
            }
            Message::OpenExtendedMiningChannel {
                request_id,
                user_identity,
                nominal_hash_rate,
                max_target,
                min_extranonce_size,
            } => {
                w.u32(*request_id)
                    .str0_255(user_identity)
                    .f32(*nominal_hash_rate)
                    .u256(max_target)
                    .u16(*min_extranonce_size);
            }
            Message::OpenExtendedMiningChannelSuccess {
                request_id,
                channel_id,
                target,
                extranonce_size,
                extranonce_prefix,
                group_channel_id,
            } => {
                w.u32(*request_id)
                    .u32(*channel_id)
                    .u256(target)
                    .u16(*extranonce_size)
                    .b0_32(extranonce_prefix)
                    .u32(*group_channel_id);
            }
            Message::NewMiningJob {
                channel_id,
                job_id,
                min_ntime,
                version,
                merkle_root,
            } => {
                w.u32(*channel_id)
                    .u32(*job_id)
                    .option_u32(*min_ntime)
                    .u32(*version)
                    .u256(merkle_root);
            }
            Message::UpdateChannel {
                channel_id,
                nominal_hash_rate,
                maximum_target,
            } => {
                w.u32(*channel_id)
                    .f32(*nominal_hash_rate)
                    .u256(maximum_target);
            }
            Message::UpdateChannelError {
                channel_id,
                error_code,
            } => {
                w.u32(*channel_id).str0_255(error_code);
            }
            Message::CloseChannel {
                channel_id,
                reason_code,
            } => {
                w.u32(*channel_id).str0_255(reason_code);
            }
            Message::SetExtranoncePrefix {
                channel_id,
                extranonce_prefix,
            } => {
                w.u32(*channel_id).b0_32(extranonce_prefix);
            }
            Message::SubmitSharesStandard {
                channel_id,
                sequence_number,
                job_id,
                nonce,
                ntime,
                version,
            } => {
                w.u32(*channel_id)
                    .u32(*sequence_number)
                    .u32(*job_id)
                    .u32(*nonce)
                    .u32(*ntime)
                    .u32(*version);
            }
            Message::SubmitSharesExtended {
                channel_id,
                sequence_number,
                job_id,
                nonce,
                ntime,
                version,
                extranonce,
            } => {
                w.u32(*channel_id)
                    .u32(*sequence_number)
                    .u32(*job_id)
                    .u32(*nonce)
                    .u32(*ntime)
                    .u32(*version)
                    .b0_32(extranonce);
            }
            Message::SubmitSharesSuccess {
                channel_id,
                last_sequence_number,
                new_submits_accepted_count,
                new_shares_sum,
            } => {
                w.u32(*channel_id)
                    .u32(*last_sequence_number)
                    .u32(*new_submits_accepted_count)
                    .u64(*new_shares_sum);
            }
            Message::SubmitSharesError {
                channel_id,
                sequence_number,
                error_code,
            } => {
                w.u32(*channel_id)
                    .u32(*sequence_number)
                    .str0_255(error_code);
            }
            Message::NewExtendedMiningJob {
                channel_id,
                job_id,
                min_ntime,
                version,
                version_rolling_allowed,
                merkle_path,
                coinbase_tx_prefix,
                coinbase_tx_suffix,
            } => {
                w.u32(*channel_id)
                    .u32(*job_id)
                    .option_u32(*min_ntime)
                    .u32(*version)
                    .bool(*version_rolling_allowed)
                    .seq0_255_u256(merkle_path)
                    .b0_64k(coinbase_tx_prefix)
                    .b0_64k(coinbase_tx_suffix);
            }
            Message::SetNewPrevHash {
                channel_id,
                job_id,
                prev_hash,
                min_ntime,
                nbits,
            } => {
                w.u32(*channel_id)
                    .u32(*job_id)
                    .u256(prev_hash)
                    .u32(*min_ntime)
                    .u32(*nbits);
            }
            Message::SetTarget {
                channel_id,
                maximum_target,
            } => {
                w.u32(*channel_id).u256(maximum_target);
            }
            Message::SetGroupChannel {
                group_channel_id,
                channel_ids,
            } => {
                w.u32(*group_channel_id).seq0_64k_u32(channel_ids);
            }
            Message::SetCustomMiningJob {
                channel_id,
                request_id,
                token,
                version,
                prev_hash,
                min_ntime,
                nbits,
                coinbase_tx_version,
                coinbase_prefix,
                coinbase_tx_input_n_sequence,
                coinbase_tx_outputs,
                coinbase_tx_locktime,
                merkle_path,
            } => {
                w.u32(*channel_id)
                    .u32(*request_id)
                    .b0_255(token)
                    .u32(*version)
                    .u256(prev_hash)
                    .u32(*min_ntime)
                    .u32(*nbits)
                    .u32(*coinbase_tx_version)
                    .b0_255(coinbase_prefix)
                    .u32(*coinbase_tx_input_n_sequence)
                    .b0_64k(coinbase_tx_outputs)
                    .u32(*coinbase_tx_locktime)
                    .seq0_255_u256(merkle_path);
            }
            Message::SetCustomMiningJobSuccess {
                channel_id,
                request_id,
                job_id,
            } => {
                w.u32(*channel_id).u32(*request_id).u32(*job_id);
            }
            Message::SetCustomMiningJobError {
                channel_id,
                request_id,
                error_code,
            } => {
                w.u32(*channel_id).u32(*request_id).str0_255(error_code);
            }
            Message::AllocateMiningJobToken {
                user_identifier,
                request_id,
            } => {
                w.str0_255(user_identifier).u32(*request_id);
            }
            Message::AllocateMiningJobTokenSuccess {
                request_id,
                mining_job_token,
                coinbase_outputs,
            } => {
                w.u32(*request_id)
                    .b0_255(mining_job_token)
                    .b0_64k(coinbase_outputs);
            }
            Message::DeclareMiningJob {
                request_id,
                mining_job_token,
                version,
                coinbase_tx_prefix,
                coinbase_tx_suffix,
                wtxid_list,
                excess_data,
            } => {
                w.u32(*request_id)
                    .b0_255(mining_job_token)
                    .u32(*version)
                    .b0_64k(coinbase_tx_prefix)
                    .b0_64k(coinbase_tx_suffix)
                    .seq0_64k_u256(wtxid_list)
                    .b0_64k(excess_data);
            }
            Message::DeclareMiningJobSuccess {
                request_id,
                new_mining_job_token,
            } => {
                w.u32(*request_id).b0_255(new_mining_job_token);
            }
            Message::DeclareMiningJobError {
                request_id,
                error_code,
                error_details,
            } => {
                w.u32(*request_id)
                    .str0_255(error_code)
                    .b0_64k(error_details);
            }
            Message::ProvideMissingTransactions {
                request_id,
                unknown_tx_position_list,
            } => {
                w.u32(*request_id).seq0_64k_u16(unknown_tx_position_list);
            }
            Message::ProvideMissingTransactionsSuccess {
                request_id,
                transaction_list,
            } => {
                w.u32(*request_id).seq0_64k_b0_16m(transaction_list);
            }
            Message::PushSolution {
                extranonce,
                prev_hash,
                nonce,
                ntime,
                nbits,
                version,
            } => {
                w.b0_32(extranonce)
                    .u256(prev_hash)
                    .u32(*nonce)
                    .u32(*ntime)
                    .u32(*nbits)
                    .u32(*version);
            }
            Message::CoinbaseOutputConstraints {
                coinbase_output_max_additional_size,
                coinbase_output_max_additional_sigops,
            } => {
                w.u32(*coinbase_output_max_additional_size)
                    .u16(*coinbase_output_max_additional_sigops);
            }
            Message::NewTemplate {
                template_id,
                future_template,
                version,
                coinbase_tx_version,
                coinbase_prefix,
                coinbase_tx_input_sequence,
                coinbase_tx_value_remaining,
                coinbase_tx_outputs_count,
                coinbase_tx_outputs,
                coinbase_tx_locktime,
                merkle_path,
            } => {
                w.u64(*template_id)
                    .bool(*future_template)
                    .u32(*version)
                    .u32(*coinbase_tx_version)
                    .b0_255(coinbase_prefix)
                    .u32(*coinbase_tx_input_sequence)
                    .u64(*coinbase_tx_value_remaining)
                    .u32(*coinbase_tx_outputs_count)
                    .b0_64k(coinbase_tx_outputs)
                    .u32(*coinbase_tx_locktime)
                    .seq0_255_u256(merkle_path);
            }
            Message::TemplateSetNewPrevHash {
                template_id,
                prev_hash,
                header_timestamp,
                n_bits,
                target,
            } => {
                w.u64(*template_id)
                    .u256(prev_hash)
                    .u32(*header_timestamp)
                    .u32(*n_bits)
                    .u256(target);
            }
            Message::RequestTransactionData { template_id } => {
                w.u64(*template_id);
            }
            Message::RequestTransactionDataSuccess {
                template_id,
                excess_data,
                transaction_list,
            } => {
                w.u64(*template_id)
                    .b0_64k(excess_data)
                    .seq0_64k_b0_16m(transaction_list);
            }
            Message::RequestTransactionDataError {
                template_id,
                error_code,
            } => {
                w.u64(*template_id).str0_255(error_code);
            }
            Message::SubmitSolution {
                template_id,
                version,
                header_timestamp,
                header_nonce,
                coinbase_tx,
            } => {
                w.u64(*template_id)
                    .u32(*version)
                    .u32(*header_timestamp)
                    .u32(*header_nonce)
                    .b0_64k(coinbase_tx);
            }
        }
    }

    /// Decodes a frame of the core protocols (extension 0).
    pub fn decode(frame: &Frame) -> Result<Message, DecodeError> {
        use types::*;
        let header = frame.header;
        if header.extension() != 0 {
            return Err(DecodeError::UnknownExtension(header.extension()));
        }
        let t = header.msg_type;
        let r = &mut Reader::new(&frame.payload);
        let message = match t {
            SETUP_CONNECTION => Message::SetupConnection(SetupConnection {
                protocol: Protocol::from_u8(r.u8("protocol")?),
                min_version: r.u16("min_version")?,
                max_version: r.u16("max_version")?,
                flags: r.u32("flags")?,
                endpoint_host: r.str0_255("endpoint_host")?,
                endpoint_port: r.u16("endpoint_port")?,
                vendor: r.str0_255("vendor")?,
                hardware_version: r.str0_255("hardware_version")?,
                firmware: r.str0_255("firmware")?,
                device_id: r.str0_255("device_id")?,
            }),
            SETUP_CONNECTION_SUCCESS => Message::SetupConnectionSuccess {
                used_version: r.u16("used_version")?,
                flags: r.u32("flags")?,
            },
            SETUP_CONNECTION_ERROR => Message::SetupConnectionError {
                flags: r.u32("flags")?,
                error_code: r.str0_255("error_code")?,
            },
            CHANNEL_ENDPOINT_CHANGED => Message::ChannelEndpointChanged {
                channel_id: r.u32("channel_id")?,
            },
            RECONNECT => Message::Reconnect {
                new_host: r.str0_255("new_host")?,
                new_port: r.u16("new_port")?,
            },
            OPEN_STANDARD_MINING_CHANNEL => Message::OpenStandardMiningChannel {
                request_id: r.u32("request_id")?,
                user_identity: r.str0_255("user_identity")?,
                nominal_hash_rate: r.f32("nominal_hash_rate")?,
                max_target: r.u256("max_target")?,
            },
            OPEN_STANDARD_MINING_CHANNEL_SUCCESS => Message::OpenStandardMiningChannelSuccess {
                request_id: r.u32("request_id")?,
                channel_id: r.u32("channel_id")?,
                target: r.u256("target")?,
                extranonce_prefix: r.b0_32("extranonce_prefix")?,
                group_channel_id: r.u32("group_channel_id")?,
            },
            OPEN_MINING_CHANNEL_ERROR => Message::OpenMiningChannelError {
                request_id: r.u32("request_id")?,
                error_code: r.str0_255("error_code")?,
            },
            OPEN_EXTENDED_MINING_CHANNEL => Message::OpenExtendedMiningChannel {
                request_id: r.u32("request_id")?,
                user_identity: r.str0_255("user_identity")?,
                nominal_hash_rate: r.f32("nominal_hash_rate")?,
                max_target: r.u256("max_target")?,
                min_extranonce_size: r.u16("min_extranonce_size")?,
            },
            OPEN_EXTENDED_MINING_CHANNEL_SUCCESS => Message::OpenExtendedMiningChannelSuccess {
                request_id: r.u32("request_id")?,
                channel_id: r.u32("channel_id")?,
                target: r.u256("target")?,
                extranonce_size: r.u16("extranonce_size")?,
                extranonce_prefix: r.b0_32("extranonce_prefix")?,
                group_channel_id: r.u32("group_channel_id")?,
            },
            NEW_MINING_JOB => Message::NewMiningJob {
                channel_id: r.u32("channel_id")?,
                job_id: r.u32("job_id")?,
                min_ntime: r.option_u32("min_ntime")?,
                version: r.u32("version")?,
                merkle_root: r.u256("merkle_root")?,
            },
            UPDATE_CHANNEL => Message::UpdateChannel {
                channel_id: r.u32("channel_id")?,
                nominal_hash_rate: r.f32("nominal_hash_rate")?,
                maximum_target: r.u256("maximum_target")?,
            },
            UPDATE_CHANNEL_ERROR => Message::UpdateChannelError {
                channel_id: r.u32("channel_id")?,
                error_code: r.str0_255("error_code")?,
            },
            CLOSE_CHANNEL => Message::CloseChannel {
                channel_id: r.u32("channel_id")?,
                reason_code: r.str0_255("reason_code")?,
            },
            SET_EXTRANONCE_PREFIX => Message::SetExtranoncePrefix {
                channel_id: r.u32("channel_id")?,
                extranonce_prefix: r.b0_32("extranonce_prefix")?,
            },
            SUBMIT_SHARES_STANDARD => Message::SubmitSharesStandard {
                channel_id: r.u32("channel_id")?,
                sequence_number: r.u32("sequence_number")?,
                job_id: r.u32("job_id")?,
                nonce: r.u32("nonce")?,
                ntime: r.u32("ntime")?,
                version: r.u32("version")?,
            },
            SUBMIT_SHARES_EXTENDED => Message::SubmitSharesExtended {
                channel_id: r.u32("channel_id")?,
                sequence_number: r.u32("sequence_number")?,
                job_id: r.u32("job_id")?,
                nonce: r.u32("nonce")?,
                ntime: r.u32("ntime")?,
                version: r.u32("version")?,
                extranonce: r.b0_32("extranonce")?,
            },
            SUBMIT_SHARES_SUCCESS => Message::SubmitSharesSuccess {
                channel_id: r.u32("channel_id")?,
                last_sequence_number: r.u32("last_sequence_number")?,
                new_submits_accepted_count: r.u32("new_submits_accepted_count")?,
                new_shares_sum: r.u64("new_shares_sum")?,
            },
            SUBMIT_SHARES_ERROR => Message::SubmitSharesError {
                channel_id: r.u32("channel_id")?,
                sequence_number: r.u32("sequence_number")?,
                error_code: r.str0_255("error_code")?,
            },
            NEW_EXTENDED_MINING_JOB => Message::NewExtendedMiningJob {
                channel_id: r.u32("channel_id")?,
                job_id: r.u32("job_id")?,
                min_ntime: r.option_u32("min_ntime")?,
                version: r.u32("version")?,
                version_rolling_allowed: r.bool("version_rolling_allowed")?,
                merkle_path: r.seq0_255_u256("merkle_path")?,
                coinbase_tx_prefix: r.b0_64k("coinbase_tx_prefix")?,
                coinbase_tx_suffix: r.b0_64k("coinbase_tx_suffix")?,
            },
            MINING_SET_NEW_PREV_HASH => Message::SetNewPrevHash {
                channel_id: r.u32("channel_id")?,
                job_id: r.u32("job_id")?,
                prev_hash: r.u256("prev_hash")?,
                min_ntime: r.u32("min_ntime")?,
                nbits: r.u32("nbits")?,
            },
            SET_TARGET => Message::SetTarget {
                channel_id: r.u32("channel_id")?,
                maximum_target: r.u256("maximum_target")?,
            },
            SET_GROUP_CHANNEL => Message::SetGroupChannel {
                group_channel_id: r.u32("group_channel_id")?,
                channel_ids: r.seq0_64k_u32("channel_ids")?,
            },
            SET_CUSTOM_MINING_JOB => Message::SetCustomMiningJob {
                channel_id: r.u32("channel_id")?,
                request_id: r.u32("request_id")?,
                token: r.b0_255("token")?,
                version: r.u32("version")?,
                prev_hash: r.u256("prev_hash")?,
                min_ntime: r.u32("min_ntime")?,
                nbits: r.u32("nbits")?,
                coinbase_tx_version: r.u32("coinbase_tx_version")?,
                coinbase_prefix: r.b0_255("coinbase_prefix")?,
                coinbase_tx_input_n_sequence: r.u32("coinbase_tx_input_n_sequence")?,
                coinbase_tx_outputs: r.b0_64k("coinbase_tx_outputs")?,
                coinbase_tx_locktime: r.u32("coinbase_tx_locktime")?,
                merkle_path: r.seq0_255_u256("merkle_path")?,
            },
            SET_CUSTOM_MINING_JOB_SUCCESS => Message::SetCustomMiningJobSuccess {
                channel_id: r.u32("channel_id")?,
                request_id: r.u32("request_id")?,
                job_id: r.u32("job_id")?,
            },
            SET_CUSTOM_MINING_JOB_ERROR => Message::SetCustomMiningJobError {
                channel_id: r.u32("channel_id")?,
                request_id: r.u32("request_id")?,
                error_code: r.str0_255("error_code")?,
            },
            ALLOCATE_MINING_JOB_TOKEN => Message::AllocateMiningJobToken {
                user_identifier: r.str0_255("user_identifier")?,
                request_id: r.u32("request_id")?,
            },
            ALLOCATE_MINING_JOB_TOKEN_SUCCESS => Message::AllocateMiningJobTokenSuccess {
                request_id: r.u32("request_id")?,
                mining_job_token: r.b0_255("mining_job_token")?,
                coinbase_outputs: r.b0_64k("coinbase_outputs")?,
            },
            DECLARE_MINING_JOB => Message::DeclareMiningJob {
                request_id: r.u32("request_id")?,
                mining_job_token: r.b0_255("mining_job_token")?,
                version: r.u32("version")?,
                coinbase_tx_prefix: r.b0_64k("coinbase_tx_prefix")?,
                coinbase_tx_suffix: r.b0_64k("coinbase_tx_suffix")?,
                wtxid_list: r.seq0_64k_u256("wtxid_list")?,
                excess_data: r.b0_64k("excess_data")?,
            },
            DECLARE_MINING_JOB_SUCCESS => Message::DeclareMiningJobSuccess {
                request_id: r.u32("request_id")?,
                new_mining_job_token: r.b0_255("new_mining_job_token")?,
            },
            DECLARE_MINING_JOB_ERROR => Message::DeclareMiningJobError {
                request_id: r.u32("request_id")?,
                error_code: r.str0_255("error_code")?,
                error_details: r.b0_64k("error_details")?,
            },
            PROVIDE_MISSING_TRANSACTIONS => Message::ProvideMissingTransactions {
                request_id: r.u32("request_id")?,
                unknown_tx_position_list: r.seq0_64k_u16("unknown_tx_position_list")?,
            },
            PROVIDE_MISSING_TRANSACTIONS_SUCCESS => Message::ProvideMissingTransactionsSuccess {
                request_id: r.u32("request_id")?,
                transaction_list: r.seq0_64k_b0_16m("transaction_list")?,
            },
            PUSH_SOLUTION => Message::PushSolution {
                extranonce: r.b0_32("extranonce")?,
                prev_hash: r.u256("prev_hash")?,
                nonce: r.u32("nonce")?,
                ntime: r.u32("ntime")?,
                nbits: r.u32("nbits")?,
                version: r.u32("version")?,
            },
            COINBASE_OUTPUT_CONSTRAINTS => Message::CoinbaseOutputConstraints {
                coinbase_output_max_additional_size: r
                    .u32("coinbase_output_max_additional_size")?,
                coinbase_output_max_additional_sigops: r
                    .u16("coinbase_output_max_additional_sigops")?,
            },
            NEW_TEMPLATE => Message::NewTemplate {
                template_id: r.u64("template_id")?,
                future_template: r.bool("future_template")?,
                version: r.u32("version")?,
                coinbase_tx_version: r.u32("coinbase_tx_version")?,
                coinbase_prefix: r.b0_255("coinbase_prefix")?,
                coinbase_tx_input_sequence: r.u32("coinbase_tx_input_sequence")?,
                coinbase_tx_value_remaining: r.u64("coinbase_tx_value_remaining")?,
                coinbase_tx_outputs_count: r.u32("coinbase_tx_outputs_count")?,
                coinbase_tx_outputs: r.b0_64k("coinbase_tx_outputs")?,
                coinbase_tx_locktime: r.u32("coinbase_tx_locktime")?,
                merkle_path: r.seq0_255_u256("merkle_path")?,
            },
            SET_NEW_PREV_HASH => Message::TemplateSetNewPrevHash {
                template_id: r.u64("template_id")?,
                prev_hash: r.u256("prev_hash")?,
                header_timestamp: r.u32("header_timestamp")?,
                n_bits: r.u32("n_bits")?,
                target: r.u256("target")?,
            },
            REQUEST_TRANSACTION_DATA => Message::RequestTransactionData {
                template_id: r.u64("template_id")?,
            },
            REQUEST_TRANSACTION_DATA_SUCCESS => Message::RequestTransactionDataSuccess {
                template_id: r.u64("template_id")?,
                excess_data: r.b0_64k("excess_data")?,
                transaction_list: r.seq0_64k_b0_16m("transaction_list")?,
            },
            REQUEST_TRANSACTION_DATA_ERROR => Message::RequestTransactionDataError {
                template_id: r.u64("template_id")?,
                error_code: r.str0_255("error_code")?,
            },
            SUBMIT_SOLUTION => Message::SubmitSolution {
                template_id: r.u64("template_id")?,
                version: r.u32("version")?,
                header_timestamp: r.u32("header_timestamp")?,
                header_nonce: r.u32("header_nonce")?,
                coinbase_tx: r.b0_64k("coinbase_tx")?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if header.is_channel_msg() != Self::is_channel_msg(t) {
            return Err(DecodeError::ChannelBit(t));
        }
        if r.remaining() > 0 {
            return Err(DecodeError::TrailingBytes {
                msg_type: t,
                extra: r.remaining(),
            });
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::frame::PlainFrameReader;

    fn round_trip(message: Message) {
        let bytes = message.to_frame_bytes();
        let mut reader = PlainFrameReader::new(1 << 20);
        reader.push(&bytes);
        let frame = reader.next_frame().expect("bounded").expect("complete");
        assert_eq!(Message::decode(&frame), Ok(message));
    }

    /// Job Declaration and custom jobs, in job_declaration_sv2 10 / mining_sv2 12's layouts (what
    /// SRI's jd_client_sv2 0.6.0 speaks): every message survives a round trip, and the fields sit
    /// where the spec puts them.
    #[test]
    fn job_declaration_messages_round_trip_in_the_spec_layout() {
        let token = vec![0xab; 8];
        let messages = vec![
            Message::AllocateMiningJobToken {
                user_identifier: "farm".into(),
                request_id: 7,
            },
            Message::AllocateMiningJobTokenSuccess {
                request_id: 7,
                mining_job_token: token.clone(),
                coinbase_outputs: vec![1, 2, 3],
            },
            Message::DeclareMiningJob {
                request_id: 8,
                mining_job_token: token.clone(),
                version: 0x2000_0000,
                coinbase_tx_prefix: vec![0x02; 42],
                coinbase_tx_suffix: vec![0xff; 61],
                wtxid_list: vec![[0x11; 32], [0x22; 32]],
                excess_data: Vec::new(),
            },
            Message::DeclareMiningJobSuccess {
                request_id: 8,
                new_mining_job_token: vec![9; 4],
            },
            Message::DeclareMiningJobError {
                request_id: 8,
                error_code: "missing-txs".into(),
                error_details: vec![0; 2],
            },
            Message::ProvideMissingTransactions {
                request_id: 9,
                unknown_tx_position_list: vec![0, 3, 65_535],
            },
            Message::ProvideMissingTransactionsSuccess {
                request_id: 9,
                transaction_list: vec![vec![0x01; 100], Vec::new()],
            },
            Message::PushSolution {
                extranonce: vec![0x55; 16],
                prev_hash: [0x33; 32],
                nonce: 1,
                ntime: 2,
                nbits: 0x207f_ffff,
                version: 0x2000_0000,
            },
            Message::SetCustomMiningJob {
                channel_id: 2,
                request_id: 10,
                token,
                version: 0x2000_0000,
                prev_hash: [0x44; 32],
                min_ntime: 1_765_000_000,
                nbits: 0x207f_ffff,
                coinbase_tx_version: 2,
                coinbase_prefix: vec![0x03, 0x01, 0x02, 0x03],
                coinbase_tx_input_n_sequence: 0xffff_ffff,
                coinbase_tx_outputs: vec![0x00; 43],
                coinbase_tx_locktime: 0,
                merkle_path: vec![[0x66; 32]],
            },
            Message::SetCustomMiningJobSuccess {
                channel_id: 2,
                request_id: 10,
                job_id: 5,
            },
            Message::SetCustomMiningJobError {
                channel_id: 2,
                request_id: 10,
                error_code: "stale-chain-tip".into(),
            },
        ];
        for message in messages {
            round_trip(message);
        }
        // AllocateMiningJobToken: STR0_255 user identifier, then the U32 request id.
        let bytes = Message::AllocateMiningJobToken {
            user_identifier: "u".into(),
            request_id: 7,
        }
        .to_frame_bytes();
        assert_eq!(bytes, [0, 0, 0x50, 6, 0, 0, 1, b'u', 7, 0, 0, 0]);
        // ProvideMissingTransactions: U32, then SEQ0_64K[U16] (a 2-byte count).
        let bytes = Message::ProvideMissingTransactions {
            request_id: 1,
            unknown_tx_position_list: vec![2, 3],
        }
        .to_frame_bytes();
        assert_eq!(&bytes[2..], [0x55, 10, 0, 0, 1, 0, 0, 0, 2, 0, 2, 0, 3, 0]);
        // The custom job's answers carry the channel bit; Job Declaration messages do not.
        let success = Message::SetCustomMiningJobSuccess {
            channel_id: 1,
            request_id: 1,
            job_id: 1,
        }
        .to_frame_bytes();
        assert_eq!(&success[..3], [0, 0x80, 0x23]);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let message = Message::SetupConnectionSuccess {
            used_version: 2,
            flags: 0,
        };
        let mut bytes = message.to_frame_bytes();
        bytes.push(0xee);
        // The 24-bit little-endian payload length at bytes 3..6 grows by one.
        let len = u32::from_le_bytes([bytes[3], bytes[4], bytes[5], 0]) + 1;
        bytes[3..6].copy_from_slice(&len.to_le_bytes()[..3]);
        let mut reader = PlainFrameReader::new(1 << 20);
        reader.push(&bytes);
        let frame = reader.next_frame().expect("bounded").expect("complete");
        assert_eq!(
            Message::decode(&frame),
            Err(DecodeError::TrailingBytes {
                msg_type: types::SETUP_CONNECTION_SUCCESS,
                extra: 1
            })
        );
    }

    #[test]
    fn every_message_round_trips() {
        let target = [0xab; 32];
        for message in [
            Message::SetupConnection(SetupConnection {
                protocol: Protocol::Mining,
                min_version: 2,
                max_version: 2,
                flags: flags::REQUIRES_VERSION_ROLLING,
                endpoint_host: "127.0.0.1".into(),
                endpoint_port: 3333,
                vendor: "quarry".into(),
                hardware_version: "cpu".into(),
                firmware: "0.1".into(),
                device_id: "rig".into(),
            }),
            Message::SetupConnectionSuccess {
                used_version: 2,
                flags: 0,
            },
            Message::SetupConnectionError {
                flags: 3,
                error_code: "unsupported-feature-flags".into(),
            },
            Message::Reconnect {
                new_host: "h".into(),
                new_port: 1,
            },
            Message::OpenStandardMiningChannel {
                request_id: 1,
                user_identity: "addr.w".into(),
                nominal_hash_rate: 1e6,
                max_target: target,
            },
            Message::OpenExtendedMiningChannelSuccess {
                request_id: 1,
                channel_id: 2,
                target,
                extranonce_size: 8,
                extranonce_prefix: vec![1, 2, 3, 4],
                group_channel_id: 9,
            },
            Message::NewExtendedMiningJob {
                channel_id: 2,
                job_id: 3,
                min_ntime: None,
                version: 0x2000_0000,
                version_rolling_allowed: true,
                merkle_path: vec![[1; 32], [2; 32]],
                coinbase_tx_prefix: vec![1; 60],
                coinbase_tx_suffix: vec![2; 70],
            },
            Message::NewMiningJob {
                channel_id: 2,
                job_id: 3,
                min_ntime: Some(5),
                version: 1,
                merkle_root: [7; 32],
            },
            Message::SubmitSharesExtended {
                channel_id: 2,
                sequence_number: 4,
                job_id: 3,
                nonce: 5,
                ntime: 6,
                version: 7,
                extranonce: vec![0; 8],
            },
            Message::SubmitSharesSuccess {
                channel_id: 2,
                last_sequence_number: 4,
                new_submits_accepted_count: 1,
                new_shares_sum: 100,
            },
            Message::SetGroupChannel {
                group_channel_id: 1,
                channel_ids: vec![2, 3],
            },
            Message::NewTemplate {
                template_id: 1,
                future_template: true,
                version: 2,
                coinbase_tx_version: 2,
                coinbase_prefix: vec![1, 2],
                coinbase_tx_input_sequence: u32::MAX,
                coinbase_tx_value_remaining: 50,
                coinbase_tx_outputs_count: 1,
                coinbase_tx_outputs: vec![9; 43],
                coinbase_tx_locktime: 0,
                merkle_path: vec![],
            },
            Message::RequestTransactionDataSuccess {
                template_id: 1,
                excess_data: vec![],
                transaction_list: vec![vec![1, 2], vec![3]],
            },
        ] {
            round_trip(message);
        }
    }

    #[test]
    fn submit_shares_standard_matches_the_spec_layout() {
        let bytes = Message::SubmitSharesStandard {
            channel_id: 1,
            sequence_number: 2,
            job_id: 3,
            nonce: 4,
            ntime: 5,
            version: 6,
        }
        .to_frame_bytes();
        assert_eq!(&bytes[..6], &[0x00, 0x80, 0x1a, 24, 0, 0]);
        assert_eq!(&bytes[6..10], &1u32.to_le_bytes());
        assert_eq!(&bytes[26..30], &6u32.to_le_bytes());
    }

    #[test]
    fn bad_frames_are_errors() {
        let frame = |ext: u16, t: u8, payload: Vec<u8>| Frame {
            header: Header {
                extension_type: ext,
                msg_type: t,
                length: payload.len() as u32,
            },
            payload,
        };
        assert_eq!(
            Message::decode(&frame(0, 0x5f, vec![])),
            Err(DecodeError::UnknownType(0x5f))
        );
        assert_eq!(
            Message::decode(&frame(2, 0x00, vec![])),
            Err(DecodeError::UnknownExtension(2))
        );
        assert!(matches!(
            Message::decode(&frame(
                CHANNEL_BIT,
                types::SUBMIT_SHARES_STANDARD,
                vec![1, 2]
            )),
            Err(DecodeError::Wire(_))
        ));
        let mut ok = Message::SubmitSharesStandard {
            channel_id: 1,
            sequence_number: 2,
            job_id: 3,
            nonce: 4,
            ntime: 5,
            version: 6,
        }
        .to_frame_bytes();
        ok[1] = 0; // channel bit cleared
        let mut reader = PlainFrameReader::new(100);
        reader.push(&ok);
        let f = reader.next_frame().expect("ok").expect("complete");
        assert_eq!(
            Message::decode(&f),
            Err(DecodeError::ChannelBit(types::SUBMIT_SHARES_STANDARD))
        );
    }
}
