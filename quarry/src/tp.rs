//! `quarry tp`: the SV2 Template Provider runtime. Templates come from the nodes (the same
//! getblocktemplate client, long poll and ZMQ as `serve`); each pool connection is a
//! [`TpSession`]; solutions are saved and submitted to every node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quarry_stratum::v2::template_provider::{TpConfig, TpEvent, TpSession};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::TpArgs;
use crate::driver::{self, drive, Environment, Recording, Sink};
use crate::node::{Nodes, SubmitOutcome};

/// Runs the Template Provider until interrupted.
pub async fn run(args: TpArgs) -> Result<()> {
    let config = args.config()?;
    let tp = Arc::new(config.tp()?);
    let nodes = Nodes::new(
        &config.nodes,
        config.data_dir.join("blocks"),
        Duration::from_secs(config.mining.template_refresh_secs.max(1)),
        Duration::from_secs(config.mining.poll_interval_secs.max(1)),
        config.mining.longpoll,
    )?;
    let listener = TcpListener::bind(config.tp.listen)
        .await
        .with_context(|| format!("binding tp.listen {}", config.tp.listen))?;
    info!(
        listen = %listener.local_addr()?,
        authority_public_key = %tp.authority.public_text(),
        "template provider listening (pools pin this key)"
    );
    tokio::spawn(Arc::clone(&nodes).run());
    let (stop, shutdown) = watch::channel(false);
    let work = driver::follow(nodes.subscribe(), shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (tp, nodes, work) = (Arc::clone(&tp), Arc::clone(&nodes), work.clone());
                    tokio::spawn(async move { serve(stream, peer, tp, nodes, work).await });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                info!("shutting down");
                let _ = stop.send(true);
                return Ok(());
            }
        }
    }
}

/// One pool connection, on the same driver as the pool's miners.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tp: Arc<TpConfig>,
    nodes: Arc<Nodes>,
    work: watch::Receiver<driver::Work>,
) {
    let _ = stream.set_nodelay(true);
    info!(%peer, "template client connected");
    let session = TpSession::new(tp, driver::now());
    let env = Environment {
        shared: &(),
        work,
        write_timeout: WRITE_TIMEOUT,
        peer,
    };
    let session = drive(
        session,
        stream,
        Vec::new(),
        env,
        &TpSink {
            peer,
            nodes: &nodes,
        },
    )
    .await;
    match session.close_reason() {
        Some(reason) => warn!(%peer, %reason, "template client closed"),
        None => info!(%peer, "template client disconnected"),
    }
}

/// A pool that stops reading for this long is dropped: templates must not queue behind it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

struct TpSink<'a> {
    peer: SocketAddr,
    nodes: &'a Arc<Nodes>,
}

impl Sink<TpEvent> for TpSink<'_> {
    fn handle(&self, event: TpEvent) -> Recording<'_> {
        on_event(event, self.peer, self.nodes);
        Recording::Nothing
    }
}

fn on_event(event: TpEvent, peer: SocketAddr, nodes: &Arc<Nodes>) {
    match event {
        TpEvent::Constraints {
            max_additional_size,
            max_additional_sigops,
            fits: true,
        } => {
            info!(%peer, max_additional_size, max_additional_sigops, "coinbase output constraints")
        }
        TpEvent::Constraints {
            max_additional_size,
            max_additional_sigops,
            fits: false,
        } => error!(
            %peer,
            max_additional_size,
            max_additional_sigops,
            "the pool's coinbase outputs do not fit in the room the node reserves: raise \
             -blockreservedweight on bitcoind and tp.reserved_weight, or its blocks may be invalid"
        ),
        TpEvent::Refused {
            template_id,
            reason,
        } => warn!(%peer, template_id, %reason, "solution refused"),
        TpEvent::Block(block) => {
            let nodes = Arc::clone(nodes);
            // Never wait on the node inside the connection loop: templates keep flowing.
            tokio::spawn(async move {
                let hex = nodes.save_block(&block).await;
                let outcomes = Arc::clone(&nodes).submit_block(&block, hex).await;
                if !outcomes
                    .iter()
                    .any(|o| matches!(o, SubmitOutcome::Accepted | SubmitOutcome::Duplicate))
                {
                    error!(
                        height = block.height,
                        ?outcomes,
                        "solution not accepted by any node"
                    );
                }
            });
        }
    }
}
