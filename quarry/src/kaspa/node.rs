//! kaspad over wRPC with borsh encoding (`--rpclisten-borsh`): block templates, submissions and
//! block colours, from several nodes in order of preference.
//!
//! `kaspa-wrpc-client` rather than gRPC: it is rusty-kaspa's own client, needs no `protoc` to
//! build, and its borsh encoding is the node's native one; reconnection is built in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kaspa_addresses::Address;
use kaspa_wrpc_client::prelude::{
    ChannelConnection, ChannelType, ConnectOptions, ConnectStrategy, GetBlockRewardInfoResponse,
    KaspaRpcClient, NewBlockTemplateScope, RpcApi, RpcHash, RpcRawBlock, RpcState, Scope,
    SubmitBlockRejectReason, SubmitBlockReport, WrpcEncoding,
};
use tracing::{debug, info, warn};

/// How long one call may take before the next node is asked.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One kaspad.
pub struct KaspaNode {
    /// Its wRPC URL, `ws://host:port`.
    pub url: String,
    client: Arc<KaspaRpcClient>,
}

/// What a node said of a submitted block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Taken.
    Accepted,
    /// Refused, with kaspad's reason (`BlockInvalid`, `IsInIBD`, ...): an RPC "ok" whose
    /// report is `Reject` is a rejection.
    Rejected(String),
    /// The call itself failed (node down, timeout).
    Failed(String),
}

/// The nodes, first preferred; calls go to the preferred one and fail over in order.
pub struct KaspaNodes {
    nodes: Vec<KaspaNode>,
    /// The node templates came from last (to log a change).
    current: AtomicUsize,
    /// Each node's last answer, for the dashboard.
    metrics: Arc<crate::events::Metrics>,
}

impl KaspaNodes {
    /// Starts connecting to every node (in the background, retrying until each answers).
    pub async fn connect(
        urls: &[String],
        metrics: Arc<crate::events::Metrics>,
    ) -> Result<Arc<KaspaNodes>> {
        if urls.is_empty() {
            bail!("kaspa.nodes needs at least one wRPC URL");
        }
        let mut nodes = Vec::with_capacity(urls.len());
        for url in urls {
            let client = KaspaRpcClient::new(WrpcEncoding::Borsh, Some(url), None, None, None)
                .map_err(|e| anyhow!("kaspa node {url}: {e}"))?;
            let options = ConnectOptions {
                block_async_connect: false,
                strategy: ConnectStrategy::Retry,
                url: Some(url.clone()),
                connect_timeout: Some(Duration::from_secs(5)),
                retry_interval: Some(Duration::from_secs(1)),
            };
            client
                .connect(Some(options))
                .await
                .map_err(|e| anyhow!("kaspa node {url}: {e}"))?;
            nodes.push(KaspaNode {
                url: url.clone(),
                client: Arc::new(client),
            });
        }
        Ok(Arc::new(KaspaNodes {
            nodes,
            current: AtomicUsize::new(0),
            metrics,
        }))
    }

    /// The nodes, in the order to try them: connected ones in order of preference (so the pool
    /// goes back to the first node once it returns), then the rest.
    fn in_order(&self) -> impl Iterator<Item = (usize, &KaspaNode)> {
        let connected = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.client.is_connected());
        let others = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.client.is_connected());
        connected.chain(others)
    }

    /// A block template paying `pay`, with `extra_data` in the coinbase payload (kaspad puts
    /// its version before it), from the first node that answers.
    pub async fn template(&self, pay: &Address, extra_data: &[u8]) -> Result<(RpcRawBlock, bool)> {
        let mut last = anyhow!("no kaspa node");
        for (i, node) in self.in_order() {
            let call = node
                .client
                .get_block_template(pay.clone(), extra_data.to_vec());
            let started = std::time::Instant::now();
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(response)) => {
                    self.metrics
                        .node_answered(i, &node.url, Ok(started.elapsed()));
                    if self.current.swap(i, Ordering::Relaxed) != i {
                        info!(url = %node.url, "kaspa templates from this node");
                    }
                    return Ok((response.block, response.is_synced));
                }
                Ok(Err(e)) => last = anyhow!("{}: getblocktemplate: {e}", node.url),
                Err(_) => last = anyhow!("{}: getblocktemplate timed out", node.url),
            }
            debug!(error = %last, "kaspa node did not give a template");
            self.metrics
                .node_answered(i, &node.url, Err(last.to_string()));
        }
        Err(last)
    }

    /// Submits `block` to the nodes in order until one takes it; what each said.
    pub async fn submit(&self, block: &RpcRawBlock) -> Vec<Submitted> {
        let mut outcomes = Vec::new();
        for (_, node) in self.in_order() {
            let call = node.client.submit_block(block.clone(), false);
            let outcome = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(response)) => match response.report {
                    SubmitBlockReport::Success => Submitted::Accepted,
                    SubmitBlockReport::Reject(reason) => Submitted::Rejected(reject_name(reason)),
                },
                Ok(Err(e)) => Submitted::Failed(format!("{}: {e}", node.url)),
                Err(_) => Submitted::Failed(format!("{}: submitblock timed out", node.url)),
            };
            let done = outcome == Submitted::Accepted;
            outcomes.push(outcome);
            if done {
                break;
            }
        }
        outcomes
    }

    /// What the DAG made of a block: its colour, confirmations and reward.
    pub async fn reward_info(&self, hash: RpcHash) -> Result<GetBlockRewardInfoResponse> {
        let mut last = anyhow!("no kaspa node");
        for (_, node) in self.in_order() {
            let call = node.client.get_block_reward_info(hash);
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(info)) => return Ok(info),
                Ok(Err(e)) => last = anyhow!("{}: getblockrewardinfo: {e}", node.url),
                Err(_) => last = anyhow!("{}: getblockrewardinfo timed out", node.url),
            }
        }
        Err(last)
    }

    /// Calls `wake` on every `NewBlockTemplate` notification from any node, subscribing again
    /// after each reconnection. Polling covers a node that never notifies.
    pub fn on_new_templates(self: &Arc<Self>, wake: Arc<tokio::sync::Notify>) {
        for node in &self.nodes {
            let client = Arc::clone(&node.client);
            let url = node.url.clone();
            let wake = Arc::clone(&wake);
            tokio::spawn(async move {
                if let Err(e) = follow_notifications(client, &url, wake).await {
                    warn!(%url, error = %e, "kaspa template notifications stopped; polling only");
                }
            });
        }
    }
}

/// kaspad's name for a rejection.
fn reject_name(reason: SubmitBlockRejectReason) -> String {
    match reason {
        SubmitBlockRejectReason::BlockInvalid => "BlockInvalid",
        SubmitBlockRejectReason::IsInIBD => "IsInIBD",
        SubmitBlockRejectReason::RouteIsFull => "RouteIsFull",
    }
    .to_string()
}

async fn follow_notifications(
    client: Arc<KaspaRpcClient>,
    url: &str,
    wake: Arc<tokio::sync::Notify>,
) -> Result<()> {
    let (sender, receiver) = async_channel::unbounded();
    let listener = client.register_new_listener(ChannelConnection::new(
        "quarry",
        sender,
        ChannelType::Persistent,
    ));
    let states = client.rpc_ctl().multiplexer().channel();
    let subscribe = || async {
        client
            .start_notify(listener, Scope::NewBlockTemplate(NewBlockTemplateScope {}))
            .await
            .context("subscribing to NewBlockTemplate")?;
        info!(%url, "following kaspad's NewBlockTemplate notifications");
        anyhow::Ok(())
    };
    if client.is_connected() {
        subscribe().await?;
    }
    loop {
        tokio::select! {
            state = states.receiver.recv() => match state {
                Ok(RpcState::Connected) => {
                    info!(%url, "kaspa node connected");
                    // A new connection has no subscriptions: ask again, and fetch at once.
                    let _ = client
                        .stop_notify(listener, Scope::NewBlockTemplate(NewBlockTemplateScope {}))
                        .await;
                    if let Err(e) = subscribe().await {
                        warn!(%url, error = %e, "kaspa notifications unavailable; polling");
                    }
                    wake.notify_one();
                }
                Ok(RpcState::Disconnected) => warn!(%url, "kaspa node disconnected; retrying"),
                Err(_) => bail!("connection state channel closed"),
            },
            notification = receiver.recv() => match notification {
                Ok(_) => wake.notify_one(),
                Err(_) => bail!("notification channel closed"),
            },
        }
    }
}
