//! `quarry tp`: the SV2 Template Provider runtime. Templates come from the nodes (the same
//! getblocktemplate client, long poll and ZMQ as `serve`); each pool connection is a
//! [`TpSession`]; solutions are saved and submitted to every node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quarry_stratum::v2::template_provider::{TpConfig, TpEvent, TpSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, error, info, warn};

use crate::cli::TpArgs;
use crate::node::{Nodes, SubmitOutcome};
use crate::server::now_ms;

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
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (tp, nodes) = (Arc::clone(&tp), Arc::clone(&nodes));
                    tokio::spawn(async move { serve(stream, peer, tp, nodes).await });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                info!("shutting down");
                return Ok(());
            }
        }
    }
}

async fn serve(mut stream: TcpStream, peer: SocketAddr, tp: Arc<TpConfig>, nodes: Arc<Nodes>) {
    let _ = stream.set_nodelay(true);
    info!(%peer, "template client connected");
    let mut session = TpSession::new(tp, now_ms());
    let mut templates = nodes.subscribe();
    if let Some(template) = templates.borrow_and_update().clone() {
        session.handle_template(template);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            on_event(event, peer, &nodes);
        }
        while let Some(bytes) = session.poll_transmit() {
            if let Err(e) = stream.write_all(&bytes).await {
                debug!(%peer, error = %e, "write failed");
                return;
            }
        }
        if let Some(reason) = session.close_reason() {
            warn!(%peer, %reason, "closing template client");
            return;
        }
        let deadline = session.poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => {
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    info!(%peer, "template client disconnected");
                    return;
                }
                Ok(n) => session.handle_bytes(&buf[..n], now_ms()),
            },
            changed = templates.changed() => {
                if changed.is_err() {
                    return;
                }
                let template = templates.borrow_and_update().clone();
                if let Some(template) = template {
                    session.handle_template(template);
                }
            }
            _ = sleep => session.handle_timeout(now_ms()),
        }
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
